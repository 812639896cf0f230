"""visd.sft: the warm-up teaches the answer format and to use the teacher's hint, measured on held-out
(eval-split) samples that SFT never trains on."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.train import helpers as H
from visd import sft
from visd import train as T


def _format_reward(model_dir, base, sample_ids, n=2):
    """Mean format reward R7 of sampled completions (T = 1, top-p 0.95, 128 tokens: the references run to
    ~110 tokens) on ``sample_ids``."""
    from visd.engines.base import Sampling
    from visd.engines.hf import HFEngine
    from visd.rewards import compute_rewards

    engine = HFEngine(model_dir, device="cpu")
    samples = {r["sample_id"]: r for r in T.read_rows([base["samples"]])}
    rows = [r for r in T.read_rows(base["frames"]) if r["sample_id"] in set(sample_ids)]
    reqs = H.requests_for(engine, samples, rows)
    out = engine.generate([q for q, _ in reqs], n, Sampling(temperature=1.0, top_p=0.95, max_new_tokens=128, seed=1))
    scores = [compute_rewards(c.text, samples[row["sample_id"]]) for (q, row), group in zip(reqs, out) for c in group]
    return float(np.mean([s["format"] for s in scores])), float(np.mean([s["total"] for s in scores]))


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a 2-core box shared with other jobs stall at every barrier (5-10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sft_learns_format_and_to_use_the_hint(tmp_path_factory, tmp_path, one_thread):
    base, _ = H.shared_data(tmp_path_factory)
    # a model sized like the recommended embedded default (vision depth 1: one full-attention block)
    from visd import tiny
    from visd.config import section

    init = tmp_path / "init"
    rows = T.read_rows([base["samples"]])
    tiny.build_tiny(init, tiny.corpus_from_samples(rows, section("prompt", {})["system"]),
                    {**section("model", {})["tiny"], "vision_depth": 1, "hidden_size": 96, "intermediate_size": 256},
                    seed=0)
    eval_ids = sorted(r["sample_id"] for r in rows if r["split"] == "eval")
    train_ids = {r["sample_id"] for r in rows if r["split"] == "train"}
    assert eval_ids and not set(eval_ids) & train_ids

    fmt0, _ = _format_reward(str(init), base, eval_ids)
    out = tmp_path / "sft"
    steps, bs = 200, 8
    params = {"seed": 0, "prompt": H.PROMPT, "teacher": {"hint": ["answer", "window", "keyframes", "feedback"]},
              "sft": {"steps": steps, "batch_size": bs, "lr": 3e-3, "warmup_steps": 10, "teacher_view_fraction": 0.5}}
    info = sft.run(params, base["samples"], base["frames"], str(init), str(out), metrics_path=str(tmp_path / "m.parquet"),
                   progress=False)
    m = pq.read_table(tmp_path / "m.parquet").to_pandas()
    assert len(m) == steps and m["loss"].iloc[-10:].mean() < 0.3 * m["loss"].iloc[:10].mean()
    assert 0.35 < m["teacher_view"].sum() / (steps * bs) < 0.65  # teacher_view_fraction 0.5 of the examples
    before, after = info["answer_margin_before"], info["answer_margin_after"]
    assert before["n"] == after["n"] == len(eval_ids)
    # held-out samples: the reference (and its answer) become far more likely in both views
    assert after["student_answer_logp"] > before["student_answer_logp"] + 20
    assert after["teacher_answer_logp"] > before["teacher_answer_logp"] + 20
    # the teacher view (hint: verified answer, window, key-frame times) makes the verified answer and the
    # whole reference more likely than the student view does (measured here: +1.14 and +4.09 nats)
    assert after["margin_mean"] > before["margin_mean"] + 0.5 and after["margin_positive"] >= 0.5
    assert after["reference_margin_mean"] > before["reference_margin_mean"] + 1.0
    fmt1, _ = _format_reward(str(out), base, eval_ids)
    assert fmt0 < 0.1 and fmt1 >= 0.5, (fmt0, fmt1)  # measured here: 0.0 → 0.75
    # the folder is a complete HF model with tokenizer files and provenance
    assert (out / "tokenizer.json").exists() and T.trainer_info(out)["role"] == "sft"


def test_shared_prompts_teacher_view_equals_render(tiny_model):
    """SharedPrompts splices the hint into the cached student prompt: token-exact with visd.prompts.render's
    teacher view (ids, M-RoPE type ids, text) and sharing the student's pixel tensor."""
    import torch

    from tests.conftest import TEST_SAMPLE, test_frames_row
    from visd.config import section
    from visd.prompts import hint_text

    tok = T.load_tokenizer(tiny_model)
    samples = {TEST_SAMPLE["sample_id"]: TEST_SAMPLE}
    frames = {TEST_SAMPLE["sample_id"]: test_frames_row()}
    ref = T.Prompts(tok, samples, frames, section("prompt", {"mode": "video"}))
    shared = sft.SharedPrompts(tok, samples, frames, section("prompt", {"mode": "video"}))
    sid = TEST_SAMPLE["sample_id"]
    for hint in (None, "", hint_text(TEST_SAMPLE, "The answer is wrong."),
                 hint_text({**TEST_SAMPLE, "answer": "From <t>0.0</t>s to <t>0.5</t>s"}, None, components=["answer"])):
        a, b = ref.get(sid, "teacher", hint), shared.get(sid, "teacher", hint)
        assert set(a) == set(b)
        for k in a:
            assert (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]), (hint, k)
        assert b["pixel_values_videos"] is shared.get(sid)["pixel_values_videos"]  # no second copy of the pixels


def test_copy_examples_are_well_formed(tiny_model):
    """The text-only copy warm-up: each example's hint states a fresh random answer X of the sample's task
    type, the target is the reference with <answer>X</answer>, the prompt has no vision input, and a batch
    of them collates and runs through the model (finite loss)."""
    import re

    import torch

    from tests.conftest import TEST_SAMPLE
    from visd import losses
    from visd.prompts import ASSISTANT_TAIL

    tok = T.load_tokenizer(tiny_model)
    model = T.load_model(tiny_model)
    rng = np.random.default_rng(0)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    comps = ["answer", "window", "keyframes", "feedback"]
    seen = set()
    for task in ("mcq", "numeric", "open", "temporal", "spatial", "spatiotemporal"):
        x = sft.random_answer(task, rng)
        assert x and "\n" not in x
        if task == "temporal":
            a, b = (float(v) for v in re.findall(r"<t>([\d.]+)</t>", x))
            assert 0 <= a < b <= 8.0
        if task == "spatial":
            assert re.fullmatch(r"\[\d+,\d+,\d+,\d+\]", x)
        if task == "spatiotemporal":
            assert re.fullmatch(r'\{("\d+":\[\d+,\d+,\d+,\d+\],?)+\}', x)
    ps, cs = [], []
    for _ in range(8):
        p, c, x = sft.copy_example(tok, TEST_SAMPLE, rng, comps, "The answer is wrong.")
        seen.add(x)
        assert p["text"].endswith(ASSISTANT_TAIL) and p["hint"] in p["text"] and x in p["hint"]
        assert tok(p["text"], add_special_tokens=False)["input_ids"] == p["input_ids"][0].tolist()
        assert int(p["mm_token_type_ids"].sum()) == 0 and "pixel_values_videos" not in p
        target = tok.decode(c)
        assert target.endswith(f"<answer>{x}</answer><|im_end|>") and target.startswith("<think>")
        ps.append(p)
        cs.append(c)
    assert len(seen) >= 6  # many distinct answers: copying the hint is the only way to predict them
    batch = T.collate(ps, cs, pad, model.config)
    with torch.no_grad():
        loss = losses.sft_cross_entropy(T.completion_logits(model, batch), batch.tokens, batch.mask)
    assert torch.isfinite(loss)


def test_weighted_sft_loss_counts_answer_tokens_w_times():
    """L = Σ_t (m_t + (w−1) a_t)(−log p(y_t)) / Σ_t m_t; w = 1 is the plain token-mean cross-entropy."""
    import torch

    from visd import losses

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    answer = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)  # [0, 4] lies outside the mask
    nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    for w in (1.0, 4.0, 0.0):
        want = ((mask.float() + (w - 1) * (answer & mask).float()) * nll).sum() / mask.sum()
        got = sft.weighted_sft_loss(logits, targets, mask, answer, w)
        assert torch.allclose(got, want, atol=1e-6), (w, got, want)
    assert torch.equal(sft.weighted_sft_loss(logits, targets, mask, answer, 1.0), losses.sft_cross_entropy(logits, targets, mask))
    assert torch.allclose(sft.weighted_sft_loss(logits, targets, mask, torch.zeros_like(mask), 5.0),
                          losses.sft_cross_entropy(logits, targets, mask))


def test_counterfactual_answers_exclude_the_true_one_and_random_answers_cover_the_format():
    """Counterfactual hints from other training samples never state the sample's own answer; fresh random
    answers (sft.counterfactual_random) do so by chance, so a model that ignores the hint is not taught
    to avoid the true answer in the teacher view."""
    rows = {
        "a": {"question": "Q?", "task_type": "mcq", "answer": "A"},
        "b": {"question": "Q?", "task_type": "mcq", "answer": "B"},
        "c": {"question": "Q?", "task_type": "mcq", "answer": "C"},
        "d": {"question": "How many?", "task_type": "numeric", "answer": "2"},
        "e": {"question": "How many here?", "task_type": "numeric", "answer": "3"},
    }
    alt = sft.counterfactual_answers(rows, sorted(rows))
    assert alt["a"] == ["B", "C"] and alt["d"] == ["3"] and alt["e"] == ["2"]
    rng = np.random.default_rng(0)
    assert {sft.random_answer("mcq", rng) for _ in range(200)} == set("ABCD")


def test_weighted_sft_loss_per_row_weights():
    """A [B] tensor of answer weights weights each row's answer span by its own w_r (counterfactual rows
    apart from honest ones); equal weights give the scalar form, all ones the plain cross-entropy."""
    import torch

    from visd import losses

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 9, generator=g)
    targets = torch.randint(0, 9, (3, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    answer = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    w = torch.tensor([20.0, 1.0, 3.0])
    want = ((mask.float() + (w[:, None] - 1) * (answer & mask).float()) * nll).sum() / mask.sum()
    assert torch.allclose(sft.weighted_sft_loss(logits, targets, mask, answer, w), want, atol=1e-5)
    assert torch.allclose(sft.weighted_sft_loss(logits, targets, mask, answer, torch.full((3,), 4.0)),
                          sft.weighted_sft_loss(logits, targets, mask, answer, 4.0), atol=1e-5)
    assert torch.equal(sft.weighted_sft_loss(logits, targets, mask, answer, torch.ones(3)),
                       losses.sft_cross_entropy(logits, targets, mask))


def _record_sft_batches(monkeypatch, base, tmp_path, sft_over: dict, name: str) -> list[list[dict]]:
    """Run 4 SFT steps (batch 8, no margin evaluation) and return every batch as rows
    {sample, view, hint, target, weight}: the prompts' sample ids come from a wrapped SharedPrompts.get,
    the rows from a wrapped collate, the answer-span weights from a wrapped weighted_sft_loss."""
    import torch

    seen, batches = {}, []
    get, collate, wloss = sft.SharedPrompts.get, T.collate, sft.weighted_sft_loss

    def rec_get(self, sample_id, view="student", hint=None):
        r = get(self, sample_id, view, hint)
        seen[id(r)] = (sample_id, view)
        return r

    def rec_collate(prompts, completions, pad_id, cfg):
        batches.append([{"sample": seen[id(p)][0], "view": seen[id(p)][1], "hint": p.get("hint"), "target": list(c)}
                        for p, c in zip(prompts, completions)])
        return collate(prompts, completions, pad_id, cfg)

    def rec_wloss(logits, targets, mask, answer_mask, answer_weight):
        w = answer_weight.tolist() if isinstance(answer_weight, torch.Tensor) else [answer_weight] * len(batches[-1])
        for row, x in zip(batches[-1], w):
            row["weight"] = x
        return wloss(logits, targets, mask, answer_mask, answer_weight)

    monkeypatch.setattr(sft.SharedPrompts, "get", rec_get)
    monkeypatch.setattr(T, "collate", rec_collate)
    monkeypatch.setattr(sft, "weighted_sft_loss", rec_wloss)
    params = {"seed": 0, "prompt": H.PROMPT, "teacher": {"hint": ["answer", "window", "keyframes", "feedback"]},
              "sft": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "teacher_view_fraction": 0.5, **sft_over}}
    sft.run(params, base["samples"], base["frames"], base["init"], str(tmp_path / name), progress=False, eval_margin=False)
    monkeypatch.undo()
    return batches


def test_counterfactual_tasks_weight_and_paired_teacher_rows(tmp_path_factory, tmp_path, monkeypatch, one_thread):
    """sft.counterfactual_tasks: only teacher-view rows of those task types state another answer (hint and
    target agree on it; with sft.counterfactual_think false the target has an empty think); the others keep
    the verified answer and the reference. sft.counterfactual_weight weights the answer span of the
    counterfactual rows only. sft.paired_teacher appends teacher views of samples that are student-view
    rows of the same batch (of the listed task types when there are). With the new keys at their defaults
    the batches are those of a run without them (the default's random stream is unchanged)."""
    base, _ = H.shared_data(tmp_path_factory)
    tok = T.load_tokenizer(base["init"])
    samples = {r["sample_id"]: r for r in T.read_rows([base["samples"]])}
    verified = re.compile(r"Verified answer: (.*)\n")

    def target_answer(ids):
        m = re.search(r"<answer>(.*?)</answer>", tok.decode(ids), flags=re.DOTALL)
        return m and m.group(1)

    over = {"counterfactual": 1.0, "counterfactual_tasks": ["mcq", "open"], "counterfactual_weight": 20.0,
            "counterfactual_think": False, "paired_teacher": 3}
    batches = _record_sft_batches(monkeypatch, base, tmp_path, over, "cf")
    kinds = set()
    for rows in batches:
        # paired rows: distinct student-view samples of the batch, those of the listed task types first
        students = {r["sample"] for r in rows[:8] if r["view"] == "student"}
        listed = {s for s in students if samples[s]["task_type"] in ("mcq", "open")}
        paired = [r["sample"] for r in rows[8:]]
        assert len(paired) == min(3, len(listed or students)) and len(set(paired)) == len(paired)
        assert all(r["view"] == "teacher" for r in rows[8:]) and set(paired) <= (listed or students)
        for r in rows:
            s = samples[r["sample"]]
            if r["view"] == "student":
                assert not r["hint"] and r["weight"] == 1.0
                continue
            stated = verified.search(r["hint"]).group(1)
            assert target_answer(r["target"]) == stated  # the target's answer is the hint's
            if s["task_type"] in ("mcq", "open") and stated != s["answer"]:
                assert r["weight"] == 20.0  # counterfactual: no reasoning before the hint's answer
                assert tok.decode(r["target"]) == f"<think></think><answer>{stated}</answer><|im_end|>"
                kinds.add("counterfactual")
            else:
                assert stated == s["answer"] and tok.decode(r["target"]) == s["reference"] + "<|im_end|>"
                assert r["weight"] == 1.0
                kinds.add("honest " + ("listed" if s["task_type"] in ("mcq", "open") else "other"))
    assert {"counterfactual", "honest other"} <= kinds, kinds

    plain = _record_sft_batches(monkeypatch, base, tmp_path, {}, "plain")
    same = _record_sft_batches(monkeypatch, base, tmp_path, {"counterfactual_tasks": None, "paired_teacher": 0,
                                                             "counterfactual_weight": None}, "same")
    assert plain == same and all(len(rows) == 8 for rows in plain)
    # the default (counterfactual 0.5 over every task type) does swap answers of other task types
    assert any(r["view"] == "teacher" and samples[r["sample"]]["task_type"] not in ("mcq", "open")
               and verified.search(r["hint"]).group(1) != samples[r["sample"]]["answer"] for rows in plain for r in rows)


def test_induction_rows_repeat_a_segment_of_ordinary_tokens(tiny_model):
    """An induction row is [8 random tokens, segment, the same segment] of BPE tokens only (no special
    token, no format tag), and its loss covers exactly the repeat from its second token on: recomputed
    here by hand from the model's logits."""
    import torch

    tok = T.load_tokenizer(tiny_model)
    model = T.load_model(tiny_model)
    pool = sft.induction_pool(tok)
    excluded = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in ("<think>", "</answer>", "<t>", "<box>")}
    assert len(pool) > 100 and not excluded & set(pool.tolist())
    ids = sft.induction_batch(pool, np.random.default_rng(0), 5, 12)
    assert ids.shape == (5, 8 + 24)
    assert torch.equal(ids[:, 8:20], ids[:, 20:])
    assert len(set(ids[:, 8:20].flatten().tolist())) > 30  # fresh random segments, not one repeated row
    model.eval()
    with torch.no_grad():
        loss, acc = sft.induction_loss(model, ids)
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
    # positions 21..31 are predicted from positions 20..30: the repeat's 2nd..12th tokens
    ref = -torch.stack([logp[r, p - 1, ids[r, p]] for r in range(5) for p in range(21, 32)]).mean()
    assert abs(float(loss) - float(ref)) < 1e-4
    assert 0.0 <= acc <= 1.0


def test_induction_pretraining_builds_in_context_copying(tiny_model, one_thread):
    """The random-weight tiny model cannot copy (accuracy on the repeat ≈ 1/|pool|); 250 steps of induction
    rows give it an induction circuit that copies segments it has never seen (held-out stream)."""
    tok = T.load_tokenizer(tiny_model)
    model = T.load_model(tiny_model)
    model.config.use_cache = False
    before = sft.induction_accuracy(model, tok, 16, seed=1)
    rows = sft.induction_pretrain(model, tok, steps=250, rows=32, length=16, lr=2e-3, seed=0)
    after = sft.induction_accuracy(model, tok, 16, seed=1)
    assert len(rows) == 250 and rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert before < 0.05 and after > 0.8, (before, after)


def test_sft_induction_keys_add_rows_without_changing_the_batches(tmp_path_factory, tmp_path, monkeypatch, one_thread):
    """sft.induction_steps runs the pre-training before the SFT and sft.induction_rows adds induction rows'
    loss at every step (metrics column ``induction_loss``, ``induction`` in visd_train.json with the copy
    accuracy before and after the SFT); the SFT batches themselves are those of a run without the keys,
    and without them the metrics have no induction column."""
    import json

    base, _ = H.shared_data(tmp_path_factory)
    plain = _record_sft_batches(monkeypatch, base, tmp_path, {}, "plain")
    ind = _record_sft_batches(monkeypatch, base, tmp_path, {"induction_steps": 3, "induction_rows": 4,
                                                            "induction_length": 6}, "ind")
    assert ind == plain
    info = json.loads((tmp_path / "ind" / "visd_train.json").read_text())["induction"]
    assert info["steps"] == 3 and info["rows_per_step"] == 4
    assert 0 <= info["accuracy_before_sft"] <= 1 and 0 <= info["accuracy_after_sft"] <= 1
    params = {"seed": 0, "prompt": H.PROMPT, "sft": {"steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1}}
    for name, over in (("m0", {}), ("m1", {"induction_rows": 2})):
        sft.run({**params, "sft": {**params["sft"], **over}}, base["samples"], base["frames"], base["init"],
                str(tmp_path / name), metrics_path=str(tmp_path / f"{name}.parquet"), progress=False, eval_margin=False)
    assert "induction_loss" not in pq.read_table(tmp_path / "m0.parquet").column_names
    m1 = pq.read_table(tmp_path / "m1.parquet").to_pandas()
    assert len(m1) == 2 and np.isfinite(m1["induction_loss"]).all() and (m1["induction_loss"] > 0).all()
