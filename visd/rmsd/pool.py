"""R-MSD's teacher pool in two stages: `visd rmsd-teacher-pool` samples K responses per input from the
black-box teacher and scores them (the expensive part, cached once); `visd rmsd-pool` filters and matches
them with τ and the weighting (cheap: changing τ reruns only this).

METHODS §3, per input x with ground truth y* and teacher responses T_1..T_K:

* quality ``q_k = 1[valid(T_k)] · Metric(T_k, y*)`` (:func:`visd.rmsd.quality.quality`);
* kept ``q_k ≥ τ``;
* matching probabilities over the kept responses: closed-ended ``p_k = q_k / Σ_kept q_j``; open-ended
  ``p_k = 1 / |kept|`` (= 1/K when all are kept); ``weighting: false`` (ablation) makes every input uniform;
* **(choice)** a closed-ended input whose kept responses all have q = 0 (possible only with τ = 0) is
  matched uniformly over them;
* an input with no kept response falls back to ``fallback = "no_kept_response"``: every row has
  ``kept = False`` and ``match_prob = 0``, the input is excluded from Stage-1 SFT and from the Stage-2
  pairing, and it is counted in ``rejects/rmsd_pool/shard-K.parquet`` (reason ``no_kept_response``).
* the *best* response (Stage 1) is the kept one with the highest q (ties: lowest sample index).

Outputs: ``rmsd/responses/shard-K.parquet`` (schema :data:`RESPONSES`: response, validity, metric, q —
no τ) and ``rmsd/pool/shard-K.parquet`` (schema :data:`POOL`: the same rows plus kept, p, best, fallback,
τ), one row per (input, sample index). The teacher is black-box: only its text is stored and used (the
student re-tokenises it).

Pairing (Stage 2): rollout i of input x is paired with ``m(i) ~ p`` drawn from a generator seeded by
``(seed, rollout_id)`` (:func:`match_index`), so the discriminator and reward stages agree without sharing
state.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from visd import config as cfgmod
from visd.io import Rejects, checkpoint_hash, params_hash, write_parquet
from visd.rmsd import config as rcfg
from visd.rmsd.quality import is_closed, quality

FALLBACK_NO_KEPT = "no_kept_response"

POOL = pa.schema(
    [
        ("sample_id", pa.string()),
        ("task_type", pa.string()),
        ("teacher_id", pa.string()),  # rmsd.teacher.id, else the teacher folder's checkpoint hash
        ("sample_index", pa.int32()),  # k = 0..K-1
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("n_tokens", pa.int32()),  # in the teacher's tokenizer
        ("valid", pa.bool_()),  # the format parses (R_outer · R_task)
        ("metric", pa.string()),  # exact_match | epsilon_accuracy | temporal_iou | box_iou | validity
        ("metric_value", pa.float64()),  # Metric(T_k, y*) before the validity gate
        ("quality", pa.float64()),  # q_k = 1[valid] · metric_value
        ("closed", pa.bool_()),  # closed-ended task (p ∝ q) or open-ended (uniform)
        ("kept", pa.bool_()),  # q_k ≥ τ
        ("match_prob", pa.float64()),  # p_k (0 for dropped responses and fallback inputs)
        ("best", pa.bool_()),  # the Stage-1 SFT target of the input
        ("fallback", pa.string()),  # null, or "no_kept_response" on every row of such an input
        ("tau", pa.float64()),
        ("k", pa.int32()),
        ("weighting", pa.bool_()),
        ("params_hash", pa.string()),
    ]
)

SELECTION = ("kept", "match_prob", "best", "fallback", "tau", "weighting")  # what `visd rmsd-pool` adds
RESPONSES = pa.schema([f for f in POOL if f.name not in SELECTION])  # `visd rmsd-teacher-pool`'s table


# ============================================================================ filtering and matching (pure)

def match_probabilities(q: Sequence[float], kept: Sequence[bool], closed: bool, weighting: bool = True) -> list[float]:
    """p over the K responses of one input: ∝ q over the kept ones (closed-ended, weighted), else uniform over
    the kept ones; all 0 when nothing is kept."""
    idx = [i for i, k in enumerate(kept) if k]
    p = [0.0] * len(q)
    if not idx:
        return p
    total = sum(float(q[i]) for i in idx)
    for i in idx:
        p[i] = float(q[i]) / total if (closed and weighting and total > 0) else 1.0 / len(idx)
    return p


def filter_and_match(rows: list[dict], tau: float, weighting: bool = True) -> list[dict]:
    """Set ``kept``, ``match_prob``, ``best`` and ``fallback`` on the rows of *one* input (dicts with
    ``sample_index``, ``quality``, ``closed``); returns new dicts sorted by sample index."""
    rows = sorted((dict(r) for r in rows), key=lambda r: r["sample_index"])
    kept = [float(r["quality"]) >= tau for r in rows]
    closed = bool(rows[0]["closed"]) if rows else True
    p = match_probabilities([r["quality"] for r in rows], kept, closed, weighting)
    best = max((i for i, k in enumerate(kept) if k), key=lambda i: (rows[i]["quality"], -i), default=None)
    fallback = None if best is not None else FALLBACK_NO_KEPT
    for i, r in enumerate(rows):
        r.update(kept=kept[i], match_prob=p[i], best=i == best, fallback=fallback)
    return rows


def match_index(seed: int, rollout_id: str, probs: Sequence[float]) -> int | None:
    """The teacher response m(i) ~ p paired with rollout ``rollout_id`` (None when all p are 0)."""
    p = np.asarray(probs, dtype=np.float64)
    if not len(p) or p.sum() <= 0:
        return None
    h = int(hashlib.sha256(f"{seed}:{rollout_id}".encode()).hexdigest()[:15], 16)
    return int(np.random.default_rng(h).choice(len(p), p=p / p.sum()))


@dataclass
class Entry:
    """The pool of one input, ordered by sample index."""

    sample_id: str
    responses: list[str]
    quality: list[float]
    probs: list[float]
    closed: bool
    best: int | None
    fallback: str | None


def load_pool(paths: Iterable[str]) -> dict[str, Entry]:
    """sample id → :class:`Entry` from ``rmsd/pool`` shards."""
    by: dict[str, list[dict]] = {}
    for path in paths:
        for r in pq.read_table(path).to_pylist():
            by.setdefault(r["sample_id"], []).append(r)
    out = {}
    for sid, rows in sorted(by.items()):
        rows.sort(key=lambda r: r["sample_index"])
        best = next((i for i, r in enumerate(rows) if r["best"]), None)
        out[sid] = Entry(sid, [r["response"] for r in rows], [float(r["quality"]) for r in rows],
                         [float(r["match_prob"]) for r in rows], bool(rows[0]["closed"]), best, rows[0]["fallback"])
    return out


def pair_weight(entry: Entry, index: int, weighting: bool = True) -> float:
    """q_{m(i)} of L_D: the matched response's quality on closed-ended inputs, 1 on open-ended ones (and
    everywhere when ``weighting`` is off)."""
    return float(entry.quality[index]) if (weighting and entry.closed) else 1.0


# ============================================================================ the stages

def sample(samples_path: str, frames_path: str, teacher: str, params: dict, out_path: str,
           rejects_path: str | None = None, progress: bool = True) -> dict:
    """K teacher responses per input of ``frames_path`` (the splits of ``rmsd.pool.splits``), scored."""
    from visd.engines.base import Sampling, get_engine
    from visd.rollout import build_requests

    cfg = rcfg.section(params.get("rmsd"))
    pc, tc = cfg["pool"], cfg["teacher"]
    pcfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0)) * 1000003 + 7919
    samples = {r["sample_id"]: r for r in pq.read_table(samples_path).to_pylist()}
    frame_rows = sorted((r for r in pq.read_table(frames_path).to_pylist()
                         if samples[r["sample_id"]]["split"] in pc["splits"]), key=lambda r: r["sample_id"])
    engine = get_engine(tc["backend"], teacher, dtype=tc["dtype"], seed=seed, **tc.get("engine_args", {}))
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(teacher)
    sampling = Sampling(temperature=pc["temperature"], top_p=pc["top_p"], max_new_tokens=pc["max_new_tokens"], seed=seed)
    teacher_id = tc["id"] or f"{engine.name}:{checkpoint_hash(teacher)}"
    sampled = {k: pc[k] for k in ("k", "temperature", "top_p", "max_new_tokens", "splits", "epsilon")}
    phash = params_hash({"rmsd": {"teacher": tc, "pool": sampled}, "prompt": pcfg})
    rejects = Rejects("rmsd_teacher_pool")
    rows, t0 = [], time.time()
    for req, frow in tqdm(build_requests(tokenizer, samples, frame_rows, pcfg), desc="teacher pool", unit="input",
                          disable=not progress, file=sys.stderr):
        sid = frow["sample_id"]
        sample_row = samples[sid]
        try:
            group = engine.generate([req], pc["k"], sampling)[0]
        except Exception as e:  # noqa: BLE001 — one bad input never loses the shard
            rejects.add(sid, "generation_failed", f"{type(e).__name__}: {e}", source=frames_path)
            continue
        for c in group:
            qd = quality(c.text, sample_row, pc["epsilon"])
            rows.append({"sample_id": sid, "task_type": sample_row["task_type"], "teacher_id": teacher_id,
                         "sample_index": c.index, "response": c.text, "finish_reason": c.finish_reason,
                         "n_tokens": len(c.token_ids), "valid": qd["valid"], "metric": qd["metric"],
                         "metric_value": qd["metric_value"], "quality": qd["q"],
                         "closed": is_closed(sample_row["task_type"]), "k": pc["k"], "params_hash": phash})
    write_parquet(pa.Table.from_pylist(rows, schema=RESPONSES), out_path)
    if rejects_path:
        rejects.write(rejects_path)
    n_in = len({r["sample_id"] for r in rows})
    stats = {"inputs": n_in, "responses": len(rows), "valid": sum(r["valid"] for r in rows),
             "seconds": round(time.time() - t0, 2)}
    print(f"[rmsd-teacher-pool] {rejects.summary(n_in)}; {stats}", file=sys.stderr)
    return stats


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, rmsd.teacher, rmsd.pool, prompt}) or @file")
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--frames", required=True, help="results/frames/shard-K.parquet")
    p.add_argument("--teacher", required=True, help="HF folder of the teacher model")
    p.add_argument("--out", required=True, help="results/rmsd/responses/shard-K.parquet")
    p.add_argument("--rejects", help="results/rejects/rmsd_teacher_pool/shard-K.parquet")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rmsd-teacher-pool: {e}", file=sys.stderr)
        return 2
    sample(args.samples, args.frames, args.teacher, params, args.out, args.rejects, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="visd rmsd-teacher-pool")
    configure_parser(_p)
    sys.exit(main(_p.parse_args()))
