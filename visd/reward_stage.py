"""Reward stage: score every rollout of a shard with the VISD reward set and compute group advantages.

Output ``rewards/phase-P/shard-K.parquet``: ``rollout_id``, ``sample_id``, ``group``, one column per
reward term of :data:`visd.rewards.REWARD_TERMS`, ``total`` (sum, weights 1; METHODS §5),
``advantage`` = :func:`visd.losses.group_advantages` over the group (METHODS §1.3), and
``think_near_keyframes_p0`` / ``total_p0``: R5 and the total at progress 0 (σ = 4), comparable across
phases (:func:`visd.rewards.fixed_scale`; R5's σ shrinks with the phase's progress, so ``total`` of a
later phase is lower for the same completions).
"""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from visd import config as cfgmod
from visd.io import write_parquet
from visd.losses import group_advantages
from visd.rewards import REWARD_TERMS, compute_rewards, fixed_scale


def rewards_schema() -> pa.Schema:
    return pa.schema(
        [("rollout_id", pa.string()), ("sample_id", pa.string()), ("group", pa.string()), ("phase", pa.int32()),
         ("progress", pa.float64())]
        + [(t, pa.float64()) for t in REWARD_TERMS]
        + [("total", pa.float64()), ("advantage", pa.float64()),
           ("think_near_keyframes_p0", pa.float64()), ("total_p0", pa.float64())]
    )


def run(rollouts_path: str, samples_path: str, phase: int, params: dict, out_path: str) -> dict:
    phases = cfgmod.section("curriculum", params.get("curriculum"))["phases"]
    progress = phase / phases  # training progress p in [0, 1) at the start of the phase (R5's σ schedule)
    samples = {r["sample_id"]: r for r in pq.read_table(samples_path).to_pylist()}
    rollouts = pq.read_table(rollouts_path, columns=["rollout_id", "sample_id", "group", "index", "completion_text"])
    rows = sorted(rollouts.to_pylist(), key=lambda r: (r["group"], r["index"]))
    out = []
    for r in rows:
        sample = samples[r["sample_id"]]
        terms = compute_rewards(r["completion_text"], sample, progress=progress)
        out.append({"rollout_id": r["rollout_id"], "sample_id": r["sample_id"], "group": r["group"],
                    "phase": phase, "progress": progress, **{t: float(terms[t]) for t in REWARD_TERMS},
                    "total": float(terms["total"]), **fixed_scale(terms, r["completion_text"], sample)})
    # group advantages, group by group (groups may differ in size if a generation failed)
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and out[j]["group"] == out[i]["group"]:
            j += 1
        adv = group_advantages(torch.tensor([o["total"] for o in out[i:j]], dtype=torch.float64), j - i)
        for o, a in zip(out[i:j], adv.tolist()):
            o["advantage"] = a
        i = j
    write_parquet(pa.Table.from_pylist(out, schema=rewards_schema()), out_path)
    mean = sum(o["total"] for o in out) / len(out) if out else float("nan")
    mean_p0 = sum(o["total_p0"] for o in out) / len(out) if out else float("nan")
    print(f"[reward] phase {phase}: {len(out)} rollouts, mean total reward {mean:.3f} "
          f"({mean_p0:.3f} at progress 0, comparable across phases)", file=sys.stderr)
    return {"rollouts": len(out), "mean_total": mean, "mean_total_p0": mean_p0}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({curriculum}) or @file")
    p.add_argument("--rollouts", required=True, help="results/rollouts/phase-P/shard-K.parquet")
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--phase", type=int, default=0)
    p.add_argument("--out", required=True, help="results/rewards/phase-P/shard-K.parquet")


def main(args: argparse.Namespace) -> int:
    run(args.rollouts, args.samples, args.phase, cfgmod.parse_params(args.params), args.out)
    return 0
