"""visd.diagnostics: the Visual-OPSD KL-gap diagnostic (METHODS §2) against an independent float64
brute force, the identical-views zero, and the JSON / gap-closed arithmetic."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tests.conftest import TEST_SAMPLE, test_frames_row
from visd import diagnostics as D
from visd.config import section


def _samples():
    """Three held-out samples (one without an <answer> span) with their own random frames."""
    s1 = {**TEST_SAMPLE, "sample_id": "e-1", "split": "eval"}
    s2 = {**TEST_SAMPLE, "sample_id": "e-2", "split": "eval", "task_type": "mcq", "question": "What colour is it?",
          "options": ["A. red", "B. blue"], "answer": "B", "answer_window": None,
          "reference": "<think>The <obj>blue circle</obj><box>[1,2,3,4]</box>at<t>0.5</t>s.</think><answer>B</answer>"}
    s3 = {**TEST_SAMPLE, "sample_id": "e-3", "split": "eval", "reference": "<think>no answer here</think>"}
    samples = [s1, s2, s3]
    frames = [{**test_frames_row(n=4, seed=k), "sample_id": s["sample_id"]} for k, s in enumerate(samples)]
    return samples, frames


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from visd import train as T

    return T.load_tokenizer(tiny_model), T.load_model(tiny_model)


def _brute_force(model, tok, sample, frames, prompt_cfg, components):
    """Per sample: two explicit unpadded forwards (student / teacher prompt + reference + <|im_end|>) with
    reference M-RoPE positions; float64 KL(p_T ‖ p_S) by hand at every completion position, and the
    answer-span log-probabilities."""
    from visd.positions import rope_index_for
    from visd.prompts import hint_text, model_inputs, render

    comp = tok(sample["reference"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    logp = {}
    for view in ("student", "teacher"):
        hint = hint_text(sample, None, components=components) if view == "teacher" else None
        r = render(tok, sample, frames, prompt_cfg["mode"], prompt_cfg["system"], view=view, hint=hint)
        inp = model_inputs(r)
        lp = inp["input_ids"].shape[1]
        ids = torch.cat([inp["input_ids"], torch.tensor([comp])], 1)
        mm = torch.cat([inp["mm_token_type_ids"], torch.zeros((1, len(comp)), dtype=inp["mm_token_type_ids"].dtype)], 1)
        att = torch.ones_like(ids)
        pos, _ = rope_index_for(model.config, ids, image_grid_thw=inp.get("image_grid_thw"),
                                video_grid_thw=inp.get("video_grid_thw"),
                                second_per_grid_ts=inp.get("second_per_grid_ts"), mm_token_type_ids=mm,
                                attention_mask=att)
        kw = {k: v for k, v in inp.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        with torch.no_grad():
            z = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False, **kw).logits[0]
        z = z[lp - 1: lp - 1 + len(comp)].double()  # the logits predicting completion tokens 0..T-1
        logp[view] = z - torch.logsumexp(z, -1, keepdim=True)
    pt, ls, lt = logp["teacher"].exp(), logp["student"], logp["teacher"]
    kl = (pt * (lt - ls)).sum(-1)  # [T]
    a, b = tok.convert_tokens_to_ids("<answer>"), tok.convert_tokens_to_ids("</answer>")
    if a in comp and b in comp[comp.index(a):]:
        s = comp.index(a)
        e = s + comp[s:].index(b) + 1
    else:
        s, e = 0, len(comp)
    idx = torch.tensor(comp)
    ans = {v: float(logp[v][torch.arange(len(comp)), idx][s:e].sum()) for v in logp}
    return kl, ans["teacher"] - ans["student"]


def test_kl_gap_matches_float64_brute_force(loaded):
    tok, model = loaded
    samples, frames = _samples()
    prompt_cfg = section("prompt", {"mode": "video"})
    comps = ["answer", "window", "keyframes"]
    got = D.kl_gap(model, tok, samples, frames, prompt_cfg, components=comps, batch_size=2)
    kls, margins = zip(*(_brute_force(model, tok, s, f, prompt_cfg, comps) for s, f in zip(samples, frames)))
    n_tokens = sum(len(k) for k in kls)
    want = float(torch.cat(kls).sum() / n_tokens)
    assert got["n_samples"] == 3 and got["n_tokens"] == n_tokens
    assert want > 1e-4  # the hint changes the distributions: a non-trivial check
    assert got["kl"] == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert got["margin_mean"] == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-5)
    assert got["margin_positive"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    # batching / padding does not matter
    one = D.kl_gap(model, tok, samples, frames, prompt_cfg, components=comps, batch_size=1)
    assert one["kl"] == pytest.approx(got["kl"], rel=1e-4, abs=1e-7)


def test_kl_is_zero_for_identical_views(loaded):
    tok, model = loaded
    samples, frames = _samples()
    prompt_cfg = section("prompt", {"mode": "video"})
    empty = D.kl_gap(model, tok, samples, frames, prompt_cfg, batch_size=3, hint_fn=lambda s: "")
    assert empty["kl"] == pytest.approx(0.0, abs=1e-9) and empty["margin_mean"] == pytest.approx(0.0, abs=1e-5)
    # a sample with nothing to hint (no answer, window or key frames) gives the empty hint too
    bare = [{**s, "answer": None, "answer_window": None, "key_frames": []} for s in samples]
    assert D.kl_gap(model, tok, bare, frames, prompt_cfg, batch_size=3)["kl"] == pytest.approx(0.0, abs=1e-9)


def test_token_kl_by_hand():
    zt = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    zs = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    p = torch.softmax(zt.double(), -1)
    q = torch.softmax(zs.double(), -1)
    want = (p * (p / q).log()).sum(-1)
    got = D.token_kl(zt, zs)
    assert got.dtype == torch.float64 and torch.allclose(got, want) and got[1] == 0 and got[0] > 0


def test_select_samples_eval_sorted_capped():
    rows = [{"sample_id": i, "split": sp, "reference": ref} for i, sp, ref in
            [("c", "eval", "r"), ("a", "eval", "r"), ("b", "train", "r"), ("d", "eval", None), ("e", "eval", "r"),
             ("f", "eval", "r")]]
    assert [s["sample_id"] for s in D.select_samples(rows, {"a", "b", "c", "d", "e"}, limit=2)] == ["a", "c"]
    assert [s["sample_id"] for s in D.select_samples(rows, {"a", "b", "c", "d", "e", "f"}, limit=None)] == ["a", "c", "e", "f"]


def test_gap_closed_arithmetic():
    assert D.with_baseline({"kl": 0.25}, None) == {"kl": 0.25}
    r = D.with_baseline({"kl": 0.25, "phase": "2"}, {"kl": 1.0, "phase": "start"})
    assert r["kl_start"] == 1.0 and r["gap_closed"] == pytest.approx(0.75) and r["phase"] == "2"
    assert D.with_baseline({"kl": 0.5}, {"kl": 0.4})["gap_closed"] == pytest.approx(-0.25)  # the gap grew
    assert D.with_baseline({"kl": 0.0}, {"kl": 0.0})["gap_closed"] is None


def test_cli_writes_json_and_gap_closed(tmp_path, tiny_model):
    import pyarrow as pa

    from visd.io import checkpoint_hash, write_parquet

    samples, frames = _samples()
    samples = samples + [{**samples[0], "sample_id": "t-9", "split": "train"}]  # never used
    sp = tmp_path / "samples.parquet"
    write_parquet(pa.Table.from_pylist(samples), sp)
    fp = tmp_path / "shard-0.parquet"  # decoded frames stored inline (``images``), as render accepts them
    write_parquet(pa.Table.from_pylist([{**f, "images": [im.tolist() for im in f["images"]]} for f in frames]), fp)
    p = argparse.ArgumentParser()
    D.configure_parser(p)
    params = json.dumps({"prompt": {"mode": "video"}, "teacher": {"hint": ["answer", "window"]}, "limit": 2})
    start, after = tmp_path / "kl" / "phase-start.json", tmp_path / "kl" / "phase-0.json"
    common = ["--params", params, "--samples", str(sp), "--frames", str(fp), "--policy", str(tiny_model)]
    assert D.main(p.parse_args(common + ["--phase", "start", "--out", str(start)])) == 0
    doc = json.loads(start.read_text())
    assert doc["phase"] == -1 and doc["policy_hash"] == checkpoint_hash(tiny_model)
    assert doc["n_samples"] == 2 and doc["n_tokens"] > 0 and doc["kl"] > 0  # e-1, e-2 (limit 2, sorted)
    assert {"margin_mean", "margin_positive"} <= set(doc) and "gap_closed" not in doc
    # the same numbers as the function on the same two samples
    from visd import train as T

    direct = D.kl_gap(T.load_model(tiny_model), T.load_tokenizer(tiny_model), samples[:2], frames[:2],
                      section("prompt", {"mode": "video"}), components=["answer", "window"])
    assert doc["kl"] == pytest.approx(direct["kl"], rel=1e-6) and doc["n_tokens"] == direct["n_tokens"]
    # against a baseline: kl_start is the baseline's kl, gap_closed = 1 - kl / kl_start (same policy: 0)
    assert D.main(p.parse_args(common + ["--phase", "0", "--baseline", str(start), "--out", str(after)])) == 0
    doc2 = json.loads(after.read_text())
    assert doc2["phase"] == 0 and doc2["kl_start"] == doc["kl"]
    assert doc2["gap_closed"] == pytest.approx(1 - doc2["kl"] / doc["kl"]) and abs(doc2["gap_closed"]) < 1e-9
    assert not list(start.parent.glob(".*tmp"))  # written atomically, no temporaries left
    assert D.main(p.parse_args(common + ["--phase", "1", "--baseline", str(tmp_path / "nope.json"),
                                         "--out", str(after)])) == 2
