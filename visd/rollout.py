"""Rollout stage: G samples per training prompt of one shard from the current policy.

For each sample of the shard (split ``train`` by default) the student view is rendered
(:func:`visd.prompts.render`), the engine samples ``group_size`` completions with per-token behaviour
log-probabilities, and — so that engine/trainer drift is visible in the audit — the completions are
re-scored with the trainer's computation (the ``hf`` engine's teacher-forced forward) and the gap of
the two log-probabilities is recorded per rollout.

Output ``rollouts/phase-P/shard-K.parquet`` (schema :data:`ROLLOUTS`), one row per completion.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from visd import config as cfgmod
from visd.engines.base import Request, Sampling, get_engine
from visd.io import Rejects, checkpoint_hash, params_hash, write_parquet

ROLLOUTS = pa.schema(
    [
        ("rollout_id", pa.string()),  # "<sample_id>/p<phase>/g<index>"
        ("sample_id", pa.string()),
        ("phase", pa.int32()),
        ("group", pa.string()),  # the group = all rollouts of one prompt (the sample id)
        ("index", pa.int32()),  # 0..G-1 within the group
        ("policy_hash", pa.string()),  # checkpoint_hash of the policy folder
        ("prompt_hash", pa.string()),  # sha256 of the prompt ids + frames params hash + mode
        ("frames_params_hash", pa.string()),
        ("prompt_mode", pa.string()),
        ("n_prompt_tokens", pa.int32()),
        ("completion_text", pa.string()),
        ("completion_ids", pa.list_(pa.int32())),
        ("behaviour_logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("engine", pa.string()),
        ("seed", pa.int64()),
        ("trainer_logprob_gap_max", pa.float32()),  # max_t |engine logprob - trainer logprob| (null: not checked)
        ("trainer_logprob_gap_mean", pa.float32()),
        ("params_hash", pa.string()),  # hash of the rollout + prompt config slice
    ]
)


def prompt_hash(input_ids: list[int], frames_params_hash: str, mode: str) -> str:
    h = hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes())
    h.update(f"|{frames_params_hash}|{mode}".encode())
    return h.hexdigest()[:16]


def build_requests(tokenizer, samples: dict[str, dict], frame_rows: list[dict], prompt_cfg: dict, view="student",
                   hints: dict[str, str] | None = None) -> list[tuple[Request, dict]]:
    """One :class:`Request` per frames row (with its sample), rendered in ``view``."""
    from visd.prompts import decoded_frames, render

    out = []
    for row in frame_rows:
        sample = samples[row["sample_id"]]
        images = decoded_frames(row)
        row = {**row, "images": images}
        r = render(tokenizer, sample, row, prompt_cfg["mode"], prompt_cfg["system"], view=view,
                   hint=(hints or {}).get(row["sample_id"]))
        mm = {k: r[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                "second_per_grid_ts") if k in r}
        req = Request(
            request_id=f"{row['sample_id']}/{view}",
            input_ids=r["input_ids"][0].tolist(),
            mode=prompt_cfg["mode"],
            frames=images,
            timestamps=list(row["timestamps"]),
            sample_fps=float(row["sample_fps"]),
            mm=mm,
            text=r["text"],
        )
        out.append((req, row))
    return out


def phase_prompts(frame_rows: list[dict], limit: int | None, phase: int, rotate: bool = True) -> list[dict]:
    """The prompts of a phase: all of the shard's, or ``limit`` of them in sample-id order. With ``rotate`` a
    phase starts where the previous one stopped (wrapping around), so successive phases see the whole shard;
    without it every phase rolls out the same first ``limit`` prompts (rewards comparable across phases)."""
    rows = sorted(frame_rows, key=lambda r: r["sample_id"])
    if not limit or limit >= len(rows):
        return rows
    start = (phase * limit) % len(rows) if rotate else 0
    return sorted((rows + rows)[start: start + limit], key=lambda r: r["sample_id"])


def run(samples_path: str, frames_path: str, policy: str, phase: int, params: dict, out_path: str,
        rejects_path: str | None = None, progress: bool = True) -> dict:
    rcfg = cfgmod.section("rollout", params.get("rollout"))
    pcfg = cfgmod.section("prompt", params.get("prompt"))
    # A new random stream per phase; without rotation every phase re-rolls the same prompts with the same
    # stream, so reward differences between phases come from the policy, not from the sampling noise.
    seed = int(params.get("seed", 0)) * 1000003 + (phase if rcfg["rotate"] else 0)
    samples = {r["sample_id"]: r for r in pq.read_table(samples_path).to_pylist()}
    frame_rows = [r for r in pq.read_table(frames_path).to_pylist() if samples[r["sample_id"]]["split"] in rcfg["splits"]]
    frame_rows = phase_prompts(frame_rows, rcfg["limit"], phase, rcfg["rotate"])
    engine = get_engine(rcfg["backend"], policy, dtype=rcfg["dtype"], seed=seed, **rcfg.get("engine_args", {}))
    trainer = engine if engine.name == "hf" else None
    if rcfg["record_gap"] and trainer is None:
        trainer = get_engine("hf", policy, dtype="float32")
    sampling = Sampling(temperature=rcfg["temperature"], top_p=rcfg["top_p"], top_k=rcfg["top_k"],
                        max_new_tokens=rcfg["max_new_tokens"], seed=seed)
    policy_hash = checkpoint_hash(policy)
    phash = params_hash({"rollout": rcfg, "prompt": pcfg})
    rejects = Rejects("rollout")
    rows, t0, n_tok = [], time.time(), 0
    tokenizer = engine.tokenizer if hasattr(engine, "tokenizer") else trainer.tokenizer
    for req, frow in tqdm(build_requests(tokenizer, samples, frame_rows, pcfg), desc=f"rollout phase {phase}",
                          unit="prompt", disable=not progress, file=sys.stderr):
        try:
            group = engine.generate([req], rcfg["group_size"], sampling)[0]
        except Exception as e:  # one bad prompt never loses the shard
            rejects.add(frow["sample_id"], "generation_failed", f"{type(e).__name__}: {e}", source=frames_path)
            continue
        gaps = [None] * len(group)
        if rcfg["record_gap"] and group:
            scored = trainer.score([req] * len(group), [c.token_ids for c in group], top_k=1)
            gaps = [np.abs(np.asarray(c.logprobs) - s.logprob) if len(c.logprobs) else None
                    for c, s in zip(group, scored)]
        ph = prompt_hash(req.input_ids, frow["params_hash"], req.mode)
        for c, gap in zip(group, gaps):
            n_tok += len(c.token_ids)
            rows.append({
                "rollout_id": f"{frow['sample_id']}/p{phase}/g{c.index}",
                "sample_id": frow["sample_id"], "phase": phase, "group": frow["sample_id"], "index": c.index,
                "policy_hash": policy_hash, "prompt_hash": ph, "frames_params_hash": frow["params_hash"],
                "prompt_mode": req.mode, "n_prompt_tokens": len(req.input_ids),
                "completion_text": c.text, "completion_ids": c.token_ids, "behaviour_logprobs": c.logprobs,
                "finish_reason": c.finish_reason, "engine": engine.name, "seed": seed,
                "trainer_logprob_gap_max": float(gap.max()) if gap is not None else None,
                "trainer_logprob_gap_mean": float(gap.mean()) if gap is not None else None,
                "params_hash": phash,
            })
    rows.sort(key=lambda r: (r["sample_id"], r["index"]))
    write_parquet(pa.Table.from_pylist(rows, schema=ROLLOUTS), out_path)
    if rejects_path:
        rejects.write(rejects_path)
    dt = time.time() - t0
    gaps = [r["trainer_logprob_gap_max"] for r in rows if r["trainer_logprob_gap_max"] is not None]
    stats = {"prompts": len(frame_rows), "rollouts": len(rows), "tokens": n_tok, "seconds": round(dt, 2),
             "tokens_per_s": round(n_tok / dt, 1) if dt else None,
             "max_logprob_gap": max(gaps) if gaps else None}
    print(f"{rejects.summary(len(rows))}; {stats}", file=sys.stderr)
    return stats


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, rollout, prompt}) or @file; defaults from the schema")
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--frames", required=True, help="results/frames/shard-K.parquet")
    p.add_argument("--policy", required=True, help="HF model folder of the current policy")
    p.add_argument("--phase", type=int, default=0, help="curriculum phase (seeds and ids)")
    p.add_argument("--out", required=True, help="results/rollouts/phase-P/shard-K.parquet")
    p.add_argument("--rejects", help="results/rejects/rollout/phase-P/shard-K.parquet")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rollout: {e}", file=sys.stderr)
        return 2
    run(args.samples, args.frames, args.policy, args.phase, params, args.out, args.rejects,
        progress=not args.no_progress)
    return 0
