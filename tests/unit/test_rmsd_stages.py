"""R-MSD discriminator (loss vs a float64 reference, scalar head at the last token vs a manual forward) and
the stages end to end on small real data: teacher pool (all-fail fallback), Stage-1 SFT, discriminator
warm-up + online update with resume of the optimizer state, Stage-2 rewards read by the trainer."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.train.helpers import PROMPT, build_base
from visd.io import write_parquet
from visd.rmsd.discriminator import Discriminator, pairwise_loss

# ============================================================================ loss (no model)

def reference_loss(dt, ds, q):
    """float64, scalar Python: mean_i q_i · −log σ(dt_i − ds_i) = mean_i q_i · log(1 + e^{−(dt_i − ds_i)})."""
    total = 0.0
    for t, s, w in zip(dt, ds, q):
        u = t - s
        total += w * (math.log1p(math.exp(-u)) if u > -30 else -u + math.log1p(math.exp(u)))
    return total / len(dt)


def test_pairwise_loss_matches_float64_reference():
    rng = np.random.default_rng(0)
    dt, ds = rng.normal(0, 3, 64), rng.normal(0, 3, 64)
    dt[:3], ds[:3] = [40.0, -40.0, 0.0], [-40.0, 40.0, 0.0]  # saturated both ways, and a tie (log 2)
    q = rng.random(64)
    want = reference_loss(dt.tolist(), ds.tolist(), q.tolist())
    got64 = pairwise_loss(torch.tensor(dt), torch.tensor(ds), torch.tensor(q)).item()
    got32 = pairwise_loss(torch.tensor(dt, dtype=torch.float32), torch.tensor(ds, dtype=torch.float32),
                          torch.tensor(q, dtype=torch.float32)).item()
    assert got64 == pytest.approx(want, rel=1e-12)
    assert got32 == pytest.approx(want, rel=1e-5)
    # unweighted = q ≡ 1; gradient dL/d dt_i = −q_i σ(−(dt_i − ds_i)) / B
    assert pairwise_loss(torch.tensor(dt), torch.tensor(ds)).item() == pytest.approx(
        reference_loss(dt.tolist(), ds.tolist(), [1.0] * 64), rel=1e-12)
    t = torch.tensor(dt, requires_grad=True)
    pairwise_loss(t, torch.tensor(ds), torch.tensor(q)).backward()
    want_g = [-w / (1 + math.exp(a - b)) / 64 for a, b, w in zip(dt, ds, q)]
    assert t.grad.tolist() == pytest.approx(want_g, rel=1e-9, abs=1e-300)


def test_pairwise_loss_shapes():
    with pytest.raises(ValueError, match=r"\[B\]"):
        pairwise_loss(torch.zeros(2, 1), torch.zeros(2, 1))


# ============================================================================ with a tiny model

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("rmsd"), n_videos=3)


@pytest.fixture(scope="module")
def world(base):
    from visd import train as T
    from visd.config import section

    tok = T.load_tokenizer(base["init"])
    samples = {r["sample_id"]: r for r in T.read_rows([base["samples"]])}
    frames = {r["sample_id"]: r for r in T.read_rows(base["frames"])}
    train_ids = sorted(s for s in frames if samples[s]["split"] == "train")[:3]  # 3 inputs keep the test fast
    return tok, samples, frames, train_ids, T.Prompts(tok, samples, frames, section("prompt", PROMPT))


def test_head_reads_last_token_of_prompt_and_response(base, world):
    """D on a padded batch (prompts of different lengths left-padded, responses right-padded) equals a
    manual unpadded forward of each [prompt, response] with the head applied to the last hidden state."""
    from visd import train as T
    from visd.positions import rope_index

    tok, _, _, train_ids, prompts = world
    torch.manual_seed(0)
    d = Discriminator(T.load_model(base["init"])).eval()
    torch.nn.init.normal_(d.head.weight)
    torch.nn.init.normal_(d.head.bias)
    sids = [train_ids[0], train_ids[-1], train_ids[1]]
    comps = [tok("<think>a red circle</think><answer>B</answer>", add_special_tokens=False)["input_ids"],
             tok("<answer>3</answer>", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")],
             []]  # an empty response: the score is read at the prompt's last token
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        got = d(T.collate([prompts.get(s) for s in sids], comps, pad, d.config))
        cfg = d.lm.config
        for b, (s, c) in enumerate(zip(sids, comps)):
            p = prompts.get(s)
            ids = torch.cat([p["input_ids"], torch.tensor([c], dtype=torch.long).reshape(1, -1)], 1)
            pos, _ = rope_index(ids, video_grid_thw=p.get("video_grid_thw"), second_per_grid_ts=p.get("second_per_grid_ts"),
                                image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                                spatial_merge_size=cfg.vision_config.spatial_merge_size,
                                tokens_per_second=getattr(cfg.vision_config, "tokens_per_second", 2))
            h = d.lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos,
                           pixel_values_videos=p["pixel_values_videos"], video_grid_thw=p["video_grid_thw"],
                           second_per_grid_ts=p.get("second_per_grid_ts"), use_cache=False)[0]
            want = float(h[0, -1].double() @ d.head.weight[0].double() + d.head.bias.double()[0])
            assert got[b].item() == pytest.approx(want, abs=2e-5, rel=1e-4)


def _tables(root, base, world):
    """A hand pool (reference = a perfect response; a wrong letter / garbage = q 0; one input all-fail) and
    phase-0 rollouts of 3 rollouts per input."""
    from visd.rmsd.pool import POOL, filter_and_match
    from visd.rmsd.quality import is_closed, quality
    from visd.rollout import ROLLOUTS

    tok, samples, _, train_ids, _ = world
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pool, rolls = [], []
    for n, sid in enumerate(train_ids):
        s = samples[sid]
        resp = ["<think>nothing</think>", s["reference"]] if n else ["garbage", "<answer>"]  # first input: all fail
        scored = []
        for k, text in enumerate(resp):
            qd = quality(text, s)
            scored.append({"sample_id": sid, "task_type": s["task_type"], "teacher_id": "hand", "sample_index": k,
                           "response": text, "finish_reason": "stop", "n_tokens": 1, "valid": qd["valid"],
                           "metric": qd["metric"], "metric_value": qd["metric_value"], "quality": qd["q"],
                           "closed": is_closed(s["task_type"]), "tau": 0.3, "k": 2, "weighting": True, "params_hash": "h"})
        pool += filter_and_match(scored, 0.3)
        ref = list(tok(s["reference"], add_special_tokens=False)["input_ids"]) + [eos]
        for i, c in enumerate([ref, ref[: len(ref) // 2], ref[:3]]):
            rolls.append({"rollout_id": f"{sid}/p0/g{i}", "sample_id": sid, "phase": 0, "group": sid, "index": i,
                          "policy_hash": "t", "prompt_hash": "t", "frames_params_hash": "t", "prompt_mode": "video",
                          "n_prompt_tokens": 1, "completion_text": tok.decode(c, skip_special_tokens=True),
                          "completion_ids": c, "behaviour_logprobs": [-1.0] * len(c), "finish_reason": "stop",
                          "engine": "hf", "seed": 0, "trainer_logprob_gap_max": None, "trainer_logprob_gap_mean": None,
                          "params_hash": "t"})
    write_parquet(pa.Table.from_pylist(pool, schema=POOL), root / "pool.parquet")
    write_parquet(pa.Table.from_pylist(rolls, schema=ROLLOUTS), root / "rollouts.parquet")
    return str(root / "pool.parquet"), str(root / "rollouts.parquet")


def test_stages_end_to_end(base, world, tmp_path):
    from visd import train as T
    from visd.rmsd import discriminator as D
    from visd.rmsd import stage1, stage2

    *_, train_ids, _ = world
    pool, rollouts = _tables(tmp_path, base, world)
    params = {"seed": 0, "prompt": PROMPT, "curriculum": {"phases": 2},
              "rmsd": {"sft": {"lr": 1e-3, "batch_size": 2},
                       "discriminator": {"lr": 1e-3, "batch_size": 4, "warmup_epochs": 2, "epochs": 1}}}
    # Stage 1: only inputs with a kept response (the all-fail one is excluded and counted)
    info = stage1.run(params, base["samples"], base["frames"], [pool], base["init"], str(tmp_path / "sft"),
                      str(tmp_path / "sft.parquet"), progress=False)
    assert info["inputs"] == len(train_ids) - 1 == 2 and info["fallback_inputs"] == 1
    assert T.trainer_info(tmp_path / "sft")["role"] == "rmsd_stage1_sft"
    # warm-up from the Stage-1 student (fresh zero head): all-fail input's rollouts have no pair
    w = D.run(params, 0, base["samples"], base["frames"], [pool], [rollouts], str(tmp_path / "sft"),
              str(tmp_path / "d-warmup"), str(tmp_path / "d-warmup.parquet"), warmup=True, progress=False)
    n_pairs = 3 * (len(train_ids) - 1)
    assert w["pairs"] == n_pairs and w["skipped_rollouts"] == 3
    m = pq.read_table(tmp_path / "d-warmup.parquet").to_pylist()
    assert len(m) == 2 * math.ceil(n_pairs / 4) and m[0]["loss"] == pytest.approx(math.log(2) * m[0]["q_mean"], rel=1e-5)
    # online update continues the optimizer state and the step count
    o = D.run(params, 1, base["samples"], base["frames"], [pool], [rollouts], str(tmp_path / "d-warmup"),
              str(tmp_path / "d-1"), progress=False)
    assert o["steps"] == w["steps"] + math.ceil(n_pairs / 4)
    _, state, _ = D.load(tmp_path / "d-1")
    assert state is not None and len(state["state"]) > 0
    # Stage-2 rewards with D_warmup
    out = tmp_path / "rewards.parquet"
    stage2.run(params, 0, base["samples"], base["frames"], rollouts, [pool], str(tmp_path / "d-warmup"), str(out))
    rows = pq.read_table(out).to_pylist()
    for r in rows:
        want = 0.4 * r["d_term"] + 0.1 * r["r_outer"] + 0.1 * r["r_task"] + 0.4 * r["r_content"]
        assert r["total"] == pytest.approx(want, abs=1e-12)
        assert r["d_term"] == pytest.approx(1 / (1 + math.exp(-r["d_score"])), abs=1e-12)
        assert (r["matched_index"] is None) == r["sample_id"].startswith(train_ids[0])
    # the full reference response is a perfect rollout: R_outer = R_task = 1, R_content = q (1 on closed tasks)
    full = [r for r in rows if r["rollout_id"].endswith("/g0")]
    assert all(r["r_outer"] == 1.0 and r["r_task"] == 1.0 for r in full)
    # the trainer reads the table unchanged
    groups = T.load_groups([rollouts], [str(out)])
    assert sum(len(g) for g in groups.values()) == len(rows)
    assert sum(g[0].advantage + g[1].advantage + g[2].advantage for g in groups.values()) == pytest.approx(0.0, abs=1e-9)


def test_teacher_pool_stage_counts_fallbacks(base, tmp_path):
    """The real stages with the hf engine: `rmsd-teacher-pool` samples and scores, `rmsd-pool` selects. The
    random-weight init model as teacher writes no valid response, so every input falls back, is counted in
    the rejects table and has no best response."""
    from visd.rmsd.pool import FALLBACK_NO_KEPT, POOL, RESPONSES, load_pool, sample
    from visd.rmsd.selection import select

    responses, out, rej = tmp_path / "responses.parquet", tmp_path / "pool.parquet", tmp_path / "rejects.parquet"
    params = {"seed": 0, "prompt": PROMPT, "rmsd": {"pool": {"k": 2, "max_new_tokens": 6}}}
    sampled = sample(base["samples"], base["frames"][0], base["init"], params, str(responses), progress=False)
    r = pq.read_table(responses)
    assert r.schema.equals(RESPONSES) and r.num_rows == sampled["responses"] == 2 * sampled["inputs"]
    stats = select(str(responses), params, str(out), str(rej))
    t = pq.read_table(out)
    assert t.schema.equals(POOL)
    assert stats["responses"] == 2 * stats["inputs"] and t.num_rows == stats["responses"]
    assert t.column("response").to_pylist() == r.column("response").to_pylist()  # same rows, selection added
    assert set(t.column("tau").to_pylist()) == {0.3}
    assert sorted(set(t.column("sample_index").to_pylist())) == [0, 1]
    rejects = pq.read_table(rej).to_pylist()
    pool = load_pool([str(out)])
    fell = sorted(s for s, e in pool.items() if e.fallback == FALLBACK_NO_KEPT)
    assert stats["fallback_inputs"] == len(fell) == len([r for r in rejects if r["reason"] == FALLBACK_NO_KEPT])
    assert all(pool[s].best is None and sum(pool[s].probs) == 0 for s in fell)
    assert all(e.best is not None and sum(e.probs) == pytest.approx(1.0) for s, e in pool.items() if s not in fell)


def test_stage2_caches_reference_logprobs_the_trainer_uses(base, world, tmp_path):
    """rmsd_reward with --reference caches log π_ref of every completion token (checked per rollout against an
    unbatched float64 forward), and `visd train` with those cached values ends with the same weights as with
    the live reference model (KL 1e-3 to the Stage-1 model, METHODS §3)."""
    from visd import train as T
    from visd.rmsd import discriminator as D
    from visd.rmsd import stage2

    tok, _, _, _, prompts = world
    pool, rollouts = _tables(tmp_path, base, world)
    ref = base["init"]  # any HF folder works as the KL reference
    d = tmp_path / "d"
    D.save(D.Discriminator(T.load_model(base["init"])), None, base["init"], d, {"phase": 0, "steps": 0})
    params = {"seed": 0, "prompt": PROMPT, "curriculum": {"phases": 1}, "rmsd": {"discriminator": {"batch_size": 2}}}
    out = tmp_path / "rewards.parquet"
    stage2.run(params, 0, base["samples"], base["frames"], rollouts, [pool], str(d), str(out), reference=ref)
    rows = pq.read_table(out).to_pylist()
    model = T.load_model(ref, dtype=torch.float64).eval()
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = {r["rollout_id"]: r["completion_ids"] for r in pq.read_table(rollouts).to_pylist()}
    for r in rows:
        b = T.collate([prompts.get(r["sample_id"])], [ids[r["rollout_id"]]], pad, model.config)
        with torch.no_grad():
            want = T.token_logprobs(T.completion_logits(model, b).double(), b.tokens)[0]
        assert len(r["ref_logprob"]) == len(ids[r["rollout_id"]]) and r["reference_hash"]
        np.testing.assert_allclose(r["ref_logprob"], want.numpy(), atol=2e-4, rtol=1e-4)

    train = {"recipe": "grpo", "lam0": 0.0, "kl_coef": 0.5, "lr": 1e-3, "prompts_per_step": 2, "micro_batch": 3}
    p = {"seed": 0, "train": train, "curriculum": {"phases": 1}, "rollout": {"group_size": 3}, "prompt": PROMPT}
    args = (p, 0, base["samples"], base["frames"], [rollouts], [str(out)], base["init"])
    T.run(*args, str(tmp_path / "live"), reference=ref, progress=False)
    T.run(*args, str(tmp_path / "cached"), progress=False)
    live = T.load_model(tmp_path / "live" / "policy").state_dict()
    cached = T.load_model(tmp_path / "cached" / "policy").state_dict()
    init = T.load_model(base["init"]).state_dict()
    assert any(not torch.equal(live[k], init[k]) for k in live)  # it trained
    for k in live:
        torch.testing.assert_close(cached[k], live[k], atol=1e-6, rtol=1e-5)
