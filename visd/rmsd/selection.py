"""`visd rmsd-pool`: R-MSD's pool of one shard — the cached teacher responses (`visd rmsd-teacher-pool`)
filtered with ``q ≥ τ`` and matched (:func:`visd.rmsd.pool.filter_and_match`). Cheap, so changing τ or the
weighting reruns only this and what reads the pool, never the teacher sampling. The ablation runner
(:mod:`visd.rmsd.ablation`) uses :func:`select_rows` for its K / τ / weighting views of one pool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from visd import config as cfgmod
from visd.io import Rejects, write_parquet
from visd.rmsd import config as rcfg
from visd.rmsd.pool import FALLBACK_NO_KEPT, POOL, filter_and_match


def select_rows(rows: Iterable[dict], tau: float, weighting: bool, source: str = "",
                k: int | None = None) -> tuple[list[dict], Rejects]:
    """Pool rows (:data:`POOL`) from response rows: every input filtered and matched with ``tau`` and
    ``weighting`` (:func:`filter_and_match`), keeping the first ``k`` samples when given (an input with
    fewer is a ``ValueError`` naming the fix); inputs without a kept response counted in the rejects."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["sample_id"], []).append({f.name: r.get(f.name) for f in POOL})
    rejects = Rejects("rmsd_pool")
    out: list[dict] = []
    for sid, rs in sorted(by.items()):
        if k is not None:
            if len(rs) < k:
                raise ValueError(f"{source or 'pool'}: input {sid} has {len(rs)} teacher samples, K = {k} are needed; "
                                 f"sample the pool with rmsd.pool.k ≥ {k}")
            rs = [r for r in rs if int(r["sample_index"]) < k]
        for r in rs:
            r.update(tau=float(tau), weighting=bool(weighting), k=int(k if k is not None else r["k"]))
        rs = filter_and_match(rs, tau, weighting)
        if rs[0]["fallback"]:
            rejects.add(sid, FALLBACK_NO_KEPT, f"input {sid}: none of the {len(rs)} teacher responses reaches "
                        f"q ≥ τ = {tau} (qualities {[round(r['quality'], 3) for r in rs]}); excluded from "
                        "Stage-1 SFT and Stage-2 pairing", field="quality", source=source)
        out += rs
    return out, rejects


def select(responses_path: str, params: dict, out_path: str, rejects_path: str | None = None) -> dict:
    """`visd rmsd-pool`: the pool of one shard from its responses, with ``rmsd.pool.tau`` / ``weighting``."""
    pc = rcfg.section(params.get("rmsd"))["pool"]
    rows, rejects = select_rows(pq.read_table(responses_path).to_pylist(), pc["tau"], pc["weighting"],
                                source=responses_path)
    write_parquet(pa.Table.from_pylist(rows, schema=POOL), out_path)
    if rejects_path:
        rejects.write(rejects_path)
    n_in = len({r["sample_id"] for r in rows})
    stats = {"inputs": n_in, "responses": len(rows), "kept": sum(r["kept"] for r in rows),
             "kept_ratio": sum(r["kept"] for r in rows) / len(rows) if rows else None,
             "fallback_inputs": rejects.counts().get(FALLBACK_NO_KEPT, 0)}
    print(f"[rmsd-pool] τ = {pc['tau']}, weighting {pc['weighting']}: {rejects.summary(n_in)}; {stats}", file=sys.stderr)
    return stats


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({rmsd.pool}) or @file")
    p.add_argument("--responses", required=True, help="results/rmsd/responses/shard-K.parquet")
    p.add_argument("--out", required=True, help="results/rmsd/pool/shard-K.parquet")
    p.add_argument("--rejects", help="results/rejects/rmsd_pool/shard-K.parquet")


def main(args: argparse.Namespace) -> int:
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rmsd-pool: {e}", file=sys.stderr)
        return 2
    select(args.responses, params, args.out, args.rejects)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="visd rmsd-pool")
    configure_parser(_p)
    sys.exit(main(_p.parse_args()))
