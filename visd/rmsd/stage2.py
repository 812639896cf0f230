"""`visd rmsd-reward`: the Stage-2 rewards table of one rollout shard (METHODS §3).

Per rollout S_i of input x::

    R_i = α·d(D_φ(x, S_i)) + β·R_outer + η·R_task + δ·R_content        (α, β, η, δ) = (0.4, 0.1, 0.1, 0.4)
    A_i = group_advantages(R over the rollouts of x)                     (visd.losses.group_advantages)

* D_φ is the discriminator *before* it has seen this phase's rollouts (D_{P−1}; the warm-up one at P = 0);
  **(choice)** ``d = σ`` by default (``rmsd.reward.d_transform: sigmoid``), so the D term lives in [0, 1]
  like the other three; ``raw`` uses the unbounded score as GAD does.
* R_outer, R_task: binary format checks (:func:`visd.rmsd.quality.r_outer`, :func:`~visd.rmsd.quality.r_task`);
  R_content: the task metric on closed-ended tasks, validity-gated (= the quality q of the rollout), 0 on
  open-ended ones (:func:`~visd.rmsd.quality.content_reward`).
* Each rollout is also paired with ``m(i) ~ p`` of its input's pool (the same draw as the discriminator
  stage) for the audit; rollouts of fallback inputs (no kept teacher response) have no pair
  (``matched_index`` null) but are still rewarded and trained on.

The table holds every column of :func:`visd.reward_stage.rewards_schema` (the VISD terms R1–R7 for
comparison; ``total`` and ``advantage`` are the R-MSD ones) plus the R-MSD columns, so ``visd train``
(recipe ``grpo``, ``kl_coef`` > 0, ``--reference`` = the Stage-1 model) reads it unchanged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from visd import config as cfgmod
from visd import train as T
from visd.io import write_parquet
from visd.losses import group_advantages
from visd.reward_stage import rewards_schema
from visd.rewards import REWARD_TERMS, compute_rewards, fixed_scale
from visd.rmsd import config as rcfg
from visd.rmsd.pool import load_pool, match_index
from visd.rmsd.quality import content_reward, r_outer, r_task

RMSD_COLUMNS = [("d_score", pa.float64()), ("d_term", pa.float64()), ("r_outer", pa.float64()), ("r_task", pa.float64()),
                ("r_content", pa.float64()), ("matched_index", pa.int32()), ("matched_quality", pa.float64()),
                ("fallback", pa.string()), ("discriminator", pa.string()),
                # log π_ref(v | student view) of every completion token under the KL reference (the Stage-1
                # model), cached here so `visd train` needs no live reference (null without --reference)
                ("ref_logprob", pa.list_(pa.float32())), ("reference_hash", pa.string())]


def rmsd_rewards_schema() -> pa.Schema:
    base = rewards_schema()
    return pa.schema(list(base) + [pa.field(n, t) for n, t in RMSD_COLUMNS])


def d_term(score: float, transform: str = "sigmoid") -> float:
    """The D term of the reward: σ(score) or the raw score."""
    if transform == "raw":
        return float(score)
    return 1.0 / (1.0 + math.exp(-score)) if score >= 0 else math.exp(score) / (1.0 + math.exp(score))


def mix_reward(d: float, outer: float, task: float, content: float, alpha: float = 0.4, beta: float = 0.1,
               eta: float = 0.1, delta: float = 0.4) -> float:
    """R = α·d + β·R_outer + η·R_task + δ·R_content."""
    return alpha * d + beta * outer + eta * task + delta * content


def advantages_by_group(rows: list[dict]) -> None:
    """Set ``advantage`` on group-contiguous rows from their ``total`` (groups may differ in size)."""
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j]["group"] == rows[i]["group"]:
            j += 1
        adv = group_advantages(torch.tensor([r["total"] for r in rows[i:j]], dtype=torch.float64), j - i)
        for r, a in zip(rows[i:j], adv.tolist()):
            r["advantage"] = a
        i = j


@torch.no_grad()
def reference_logprobs(model, prompts, sample_ids, completions, pad_id: int, batch_size: int = 16,
                       device="cpu") -> list[list[float]]:
    """log π_ref(v_t | student view, v_<t) of every completion token, per completion (no gradient)."""
    model.eval()
    out: list[list[float]] = []
    for i in range(0, len(sample_ids), batch_size):
        comps = completions[i:i + batch_size]
        b = T.to_device(T.collate([prompts.get(s) for s in sample_ids[i:i + batch_size]], comps, pad_id, model.config),
                        device)
        logp = T.token_logprobs(T.completion_logits(model, b), b.tokens).float().cpu()
        out += [logp[j, :len(c)].tolist() for j, c in enumerate(comps)]
    return out


def run(params: dict, phase: int, samples_path: str, frames_paths, rollouts_path: str, pool_paths, discriminator: str,
        out_path: str, reference: str | None = None) -> dict:
    from visd.io import checkpoint_hash
    from visd.rmsd import discriminator as D

    cfg = rcfg.section(params.get("rmsd"))
    w, eps = cfg["reward"], cfg["pool"]["epsilon"]
    phases = cfgmod.section("curriculum", params.get("curriculum"))["phases"]
    prompt_cfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0))
    progress = phase / phases
    samples = {r["sample_id"]: r for r in T.read_rows([samples_path])}
    rows = sorted(pq.read_table(rollouts_path, columns=["rollout_id", "sample_id", "group", "index", "completion_text",
                                                         "completion_ids"]).to_pylist(),
                  key=lambda r: (r["group"], r["index"]))
    pool = load_pool(pool_paths)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d, _, _ = D.load(discriminator)
    d.to(device)
    tokenizer = T.load_tokenizer(discriminator)
    needed = {r["sample_id"] for r in rows}
    frames = {r["sample_id"]: r for r in T.read_rows(frames_paths) if r["sample_id"] in needed}
    prompts = T.Prompts(tokenizer, samples, frames, prompt_cfg)
    scores = D.score(d, prompts, [r["sample_id"] for r in rows], [list(r["completion_ids"]) for r in rows],
                     tokenizer.convert_tokens_to_ids("<|endoftext|>"), cfg["discriminator"]["batch_size"], device)
    d_hash = checkpoint_hash(discriminator)
    ref_lp, ref_hash = [None] * len(rows), None
    if reference:
        ref_model = T.load_model(reference).to(device)
        ref_lp = reference_logprobs(ref_model, prompts, [r["sample_id"] for r in rows],
                                    [list(r["completion_ids"]) for r in rows], tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                                    cfg["discriminator"]["batch_size"], device)
        ref_hash = checkpoint_hash(reference)
        del ref_model
    out = []
    for r, s, lp in zip(rows, scores.tolist(), ref_lp):
        sample = samples[r["sample_id"]]
        terms = compute_rewards(r["completion_text"], sample, progress=progress)
        ro, rt, rc = r_outer(r["completion_text"]), r_task(r["completion_text"], sample), content_reward(r["completion_text"], sample, eps)
        dt = d_term(s, w["d_transform"])
        total = mix_reward(dt, ro, rt, rc, w["alpha"], w["beta"], w["eta"], w["delta"])
        e = pool.get(r["sample_id"])
        m = match_index(seed, r["rollout_id"], e.probs) if e is not None and not e.fallback else None
        out.append({"rollout_id": r["rollout_id"], "sample_id": r["sample_id"], "group": r["group"], "phase": phase,
                    "progress": progress, **{t: float(terms[t]) for t in REWARD_TERMS},
                    "total": total, "total_p0": total,  # R-MSD's R has no progress-dependent term
                    "think_near_keyframes_p0": fixed_scale(terms, r["completion_text"], sample)["think_near_keyframes_p0"],
                    "d_score": s, "d_term": dt, "r_outer": ro, "r_task": rt, "r_content": rc, "matched_index": m,
                    "matched_quality": e.quality[m] if m is not None else None,
                    "fallback": e.fallback if e is not None else "no_pool_entry", "discriminator": d_hash,
                    "ref_logprob": lp, "reference_hash": ref_hash if lp is not None else None})
    advantages_by_group(out)
    write_parquet(pa.Table.from_pylist(out, schema=rmsd_rewards_schema()), out_path)
    mean = sum(o["total"] for o in out) / len(out) if out else float("nan")
    print(f"[rmsd-reward] phase {phase}: {len(out)} rollouts, mean R {mean:.3f}, mean D {scores.mean() if len(scores) else float('nan'):.3f}, "
          f"{sum(o['matched_index'] is None for o in out)} without a teacher pair", file=sys.stderr)
    return {"rollouts": len(out), "mean_total": mean}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, rmsd, prompt, curriculum}) or @file")
    p.add_argument("--phase", type=int, required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--frames", nargs="+", required=True)
    p.add_argument("--rollouts", required=True, help="results/rollouts/phase-P/shard-K.parquet")
    p.add_argument("--pool", nargs="+", required=True, help="results/rmsd/pool/shard-*.parquet")
    p.add_argument("--discriminator", required=True, help="D_{P-1} folder (phase 0: the warm-up one)")
    p.add_argument("--out", required=True, help="results/rewards/phase-P/shard-K.parquet")
    p.add_argument("--reference", default=None,
                   help="KL reference (the Stage-1 model): cache its log-probs of every completion token")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rmsd-reward: {e}", file=sys.stderr)
        return 2
    run(params, args.phase, args.samples, args.frames, args.rollouts, args.pool, args.discriminator, args.out,
        reference=args.reference)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="visd rmsd-reward")
    configure_parser(_p)
    sys.exit(main(_p.parse_args()))
