"""`visd rmsd-ablation`: the R-MSD ablation table (METHODS §3: K, τ, quality weighting) in one go.

Every variant shares what does not depend on it — samples, frames, the teacher and its pool, the
student's SFT warm-up — and redoes what does: its own pool view, Stage-1 SFT, discriminator warm-up and
the Stage-2 phases, each followed by an evaluation. The pool is sampled *once* at the largest K
(``rmsd.pool.k`` of the run, which must be ≥ every variant's K; the cached responses
``rmsd/responses/shard-*.parquet``); a variant with K = k keeps the first k samples of every input (the K
samples are independent draws, so the first k are a K = k pool) and selects them with its own τ and
weighting (:func:`visd.rmsd.selection.select_rows`). Teacher sampling is the
expensive part, so the table costs one pool instead of one per variant.

A variant runs the same stage functions as the workflow's rules (:func:`visd.rmsd.stage1.run`,
:func:`visd.rmsd.discriminator.run`, :func:`visd.rollout.run`, :func:`visd.rmsd.stage2.run`,
:func:`visd.train.run`, :func:`visd.eval.stage.run`) in one process, with the tables under
``rmsd_ablation/<variant>/`` in the workflow's layout (so ``visd audit --results`` and ``visd report`` read
them). A stage whose output exists is skipped: a killed variant rerun continues where it stopped.

:func:`summarize` makes the table: per variant K, τ, weighting, kept ratio, inputs without a kept
response, the Stage-1 score, the score after every phase and the best, and the discriminator's final
D(teacher) − D(student) gap.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visd import config as cfgmod
from visd.io import params_hash, write_json, write_parquet
from visd.rmsd import config as rcfg
from visd.rmsd.pool import FALLBACK_NO_KEPT, POOL
from visd.rmsd.selection import select_rows

VARIANT_KEYS = ("name", "k", "tau", "weighting")


def variant_config(cfg: Mapping[str, Any], variant: Mapping[str, Any]) -> dict:
    """``cfg`` with the variant's K, τ and weighting in ``rmsd.pool``; validated."""
    from visd.study import deep_merge

    over = {"rmsd": {"pool": {"k": int(variant["k"]), "tau": float(variant["tau"]),
                              "weighting": bool(variant["weighting"])}}}
    return cfgmod.validate(deep_merge(dict(cfg), over))


def find_variant(cfg: Mapping[str, Any], name: str) -> dict:
    variants = rcfg.section(cfg.get("rmsd"))["ablation"]["variants"]
    for v in variants:
        if v["name"] == name:
            return dict(v)
    raise cfgmod.ConfigError(f"rmsd.ablation.variants has no variant {name!r}; it has {[v['name'] for v in variants]}")


def _todo(root: Path, t0: float, name: str, *outs: Path) -> bool:
    if all(p.exists() for p in outs):
        return False
    print(f"[rmsd-ablation] {root.name} {name} ({time.time() - t0:.0f}s into the variant)", file=sys.stderr, flush=True)
    return True


def _evaluate(cfg: dict, samples: str, frames: Sequence[str], policy: str, tag: str, phase: int,
              root: Path, progress: bool) -> dict:
    from visd.eval import stage as evaluate

    bench = cfg["rmsd"]["ablation"]["benchmark"]
    out = root / "eval" / tag
    if not (out / f"{bench}.json").exists():
        evaluate.run(samples, list(frames), policy, phase, bench, {"evaluate": cfg["evaluate"], "prompt": cfg["prompt"]},
                     str(out / f"{bench}.parquet"), str(out / f"{bench}.json"),
                     str(root / "rejects" / "evaluate" / tag / f"{bench}.parquet"),
                     step=evaluate.checkpoint_step(policy), progress=progress)
    summary = json.loads((out / f"{bench}.json").read_text())
    return {"tag": tag, "phase": phase, "step": summary["step"],
            "score": summary["metrics"].get(cfg["rmsd"]["ablation"]["metric"])}


def run_variant(cfg: dict, samples: str, frames: Sequence[str], response_paths: Sequence[str], student_in: str,
                out_root: str, progress: bool = False) -> dict:
    """Pool view, Stage 1, discriminator warm-up and every Stage-2 phase of one variant under ``out_root``."""
    from visd import rollout, train
    from visd.rmsd import discriminator, stage1, stage2

    root = Path(out_root)
    t0 = time.time()
    pc = cfg["rmsd"]["pool"]
    phases = cfg["curriculum"]["phases"]
    shards = range(len(frames))
    if len(response_paths) != len(frames):
        raise ValueError(f"{len(response_paths)} teacher-response shards for {len(frames)} frame shards")

    # 1. the variant's pool, one shard per frame shard
    pools = [root / "rmsd" / "pool" / f"shard-{k}.parquet" for k in shards]
    kept = responses = fallbacks = 0
    for k in shards:
        rows, rejects = select_rows(pq.read_table(response_paths[k]).to_pylist(), pc["tau"], pc["weighting"],
                                    source=str(response_paths[k]), k=pc["k"])
        for r in rows:
            r["params_hash"] = params_hash({"base": r["params_hash"], "k": pc["k"], "tau": pc["tau"], "w": pc["weighting"]})
        if _todo(root, t0, f"pool shard {k}", pools[k]):
            rejects.write(str(root / "rejects" / "rmsd_pool" / f"shard-{k}.parquet"))
            write_parquet(pa.Table.from_pylist(rows, schema=POOL), str(pools[k]))
        kept += sum(r["kept"] for r in rows)
        responses += len(rows)
        fallbacks += rejects.counts().get(FALLBACK_NO_KEPT, 0)
    pool = [str(p) for p in pools]

    # 2. Stage 1: SFT on the best kept response
    s1 = root / "models" / "rmsd-sft"
    if _todo(root, t0, "stage-1 SFT", s1 / "config.json"):
        stage1.run(cfg, samples, list(frames), pool, student_in, str(s1), str(root / "metrics" / "rmsd-sft.parquet"),
                   progress=progress)
    curve = [_evaluate(cfg, samples, frames, str(s1), "stage1", -1, root, progress)]

    # 3. Stage 2: per phase rollouts → rewards with D_{P-1} → train (KL to Stage 1) → D_P
    policy, d_prev = str(s1), None
    train_params = {"seed": cfg["seed"], "train": cfg["train"], "curriculum": cfg["curriculum"],
                    "rollout": {"group_size": cfg["rollout"]["group_size"]}, "prompt": cfg["prompt"],
                    "teacher": {"top_k": cfg["teacher"]["top_k"]}}
    for phase in range(phases):
        ro = [root / "rollouts" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        rw = [root / "rewards" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        for k in shards:
            if _todo(root, t0, f"phase {phase} rollout shard {k}", ro[k]):
                rollout.run(samples, frames[k], policy, phase,
                            {"seed": cfg["seed"], "rollout": cfg["rollout"], "prompt": cfg["prompt"]}, str(ro[k]),
                            str(root / "rejects" / "rollout" / f"phase-{phase}" / f"shard-{k}.parquet"), progress=progress)
        if d_prev is None:  # warm-up on teacher vs Stage-1 student (phase-0 rollouts)
            d_prev = root / "rmsd" / "discriminator" / "warmup"
            if _todo(root, t0, "discriminator warm-up", d_prev / "visd_discriminator.json"):
                discriminator.run(cfg, 0, samples, list(frames), pool, [str(p) for p in ro], str(s1), str(d_prev),
                                  str(root / "metrics" / "rmsd-discriminator-warmup.parquet"), warmup=True,
                                  progress=progress)
        for k in shards:
            if _todo(root, t0, f"phase {phase} reward shard {k}", rw[k]):
                stage2.run(cfg, phase, samples, list(frames), str(ro[k]), pool, str(d_prev), str(rw[k]),
                           reference=str(s1) if cfg["train"]["kl_coef"] > 0 else None)
        ck = root / "checkpoints" / f"phase-{phase}"
        metrics = root / "metrics" / f"phase-{phase}.parquet"
        if _todo(root, t0, f"phase {phase} train", ck / "policy", metrics):
            train.run(train_params, phase, samples, list(frames), [str(p) for p in ro], [str(p) for p in rw], policy,
                      str(ck), teacher_in=policy, metrics_path=str(metrics), progress=progress)  # KL: cached ref
        d_next = root / "rmsd" / "discriminator" / f"phase-{phase}"
        if _todo(root, t0, f"phase {phase} discriminator", d_next / "visd_discriminator.json"):
            discriminator.run(cfg, phase, samples, list(frames), pool, [str(p) for p in ro], str(d_prev), str(d_next),
                              str(root / "metrics" / f"rmsd-discriminator-phase-{phase}.parquet"), progress=progress)
        policy, d_prev = str(ck / "policy"), d_next
        curve.append(_evaluate(cfg, samples, frames, policy, f"phase-{phase}", phase, root, progress))

    last_d = pq.read_table(root / "metrics" / f"rmsd-discriminator-phase-{phases - 1}.parquet").to_pylist()
    gap = (last_d[-1]["d_teacher_mean"] - last_d[-1]["d_student_mean"]) if last_d else None
    return {"k": pc["k"], "tau": pc["tau"], "weighting": pc["weighting"], "responses": responses,
            "kept_ratio": kept / responses if responses else None, "fallback_inputs": fallbacks,
            "curve": curve, "d_gap_final": gap, "seconds": round(time.time() - t0, 1)}


# ------------------------------------------------------------------------------------------ summary
TABLE_COLUMNS = ("variant", "k", "tau", "weighting", "kept_ratio", "fallback_inputs", "stage1", "final", "best",
                 "d_gap_final", "seconds")


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per variant (in the given order): the pool, Stage-1, final and best scores, D's final gap."""
    out = []
    for r in runs:
        scores = [p["score"] for p in r["curve"] if p["score"] is not None]
        stage1 = next((p["score"] for p in r["curve"] if p["tag"] == "stage1"), None)
        final = r["curve"][-1]["score"] if r["curve"] else None
        out.append({"variant": r["variant"], "k": r["k"], "tau": r["tau"], "weighting": r["weighting"],
                    "kept_ratio": r["kept_ratio"], "fallback_inputs": r["fallback_inputs"], "stage1": stage1,
                    "final": final, "best": max(scores) if scores else None, "d_gap_final": r["d_gap_final"],
                    "seconds": r["seconds"]})
    return out


def write_table(rows: Sequence[Mapping[str, Any]], out_csv: str) -> None:
    from visd.io import atomic_path

    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown (the README's R-MSD ablation table)."""
    def f(v, nd=1):
        return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    lines = ["| variant | K | τ | weighting | kept | no kept response | Stage 1 | final | best | D(T)−D(S) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['k']} | {r['tau']} | {'q' if r['weighting'] else 'uniform'} | "
                     f"{f(r['kept_ratio'], 2)} | {r['fallback_inputs']} | {f(r['stage1'])} | {f(r['final'])} | "
                     f"{f(r['best'])} | {f(r['d_gap_final'], 3)} |")
    return "\n".join(lines)


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="one variant: pool view, Stage 1, discriminator warm-up, Stage-2 phases, evals")
    r.add_argument("--params", required=True, help="the full workflow config as JSON (or @file)")
    r.add_argument("--variant", required=True, help="a name from rmsd.ablation.variants")
    r.add_argument("--samples", required=True)
    r.add_argument("--frames", required=True, nargs="+")
    r.add_argument("--responses", required=True, nargs="+", help="rmsd/responses/shard-*.parquet, sampled at the largest K")
    r.add_argument("--student", required=True, help="the checkpoint Stage 1 starts from (models/sft)")
    r.add_argument("--out-root", required=True, help="results/rmsd_ablation/<variant>")
    r.add_argument("--done", required=True, help="JSON written last: the variant's row and eval curve")
    r.add_argument("--progress", action="store_true")
    s = sub.add_parser("summarize", help="the ablation table (CSV, JSON, Markdown on stdout)")
    s.add_argument("--runs", required=True, nargs="+", help="done.json files (rmsd_ablation/<variant>/done.json)")
    s.add_argument("--csv", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--md", help="also write the table as Markdown here")


def main(args: argparse.Namespace) -> int:
    if args.action == "run":
        try:
            base = cfgmod.parse_params(args.params)
            base.pop("version", None)
            variant = find_variant(base, args.variant)
            cfg = variant_config(base, variant)
        except cfgmod.ConfigError as e:
            print(f"visd rmsd-ablation: {e}", file=sys.stderr)
            return 2
        have = 1 + max(max(pq.read_table(p, columns=["sample_index"]).column(0).to_pylist(), default=-1)
                       for p in args.responses)
        if cfg["rmsd"]["pool"]["k"] > have:
            print(f"visd rmsd-ablation: variant {args.variant!r} needs K = {cfg['rmsd']['pool']['k']} teacher samples "
                  f"per input, {args.responses[0]} has {have}; sample it with rmsd.pool.k ≥ "
                  f"{cfg['rmsd']['pool']['k']}", file=sys.stderr)
            return 2
        result = run_variant(cfg, args.samples, args.frames, args.responses, args.student, args.out_root, progress=args.progress)
        write_json({"variant": args.variant, "config_hash": params_hash(cfg), **result}, args.done)
        return 0
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    rows = summarize(runs)
    write_table(rows, args.csv)
    write_json({"rows": rows, "runs": runs}, args.json)
    if args.md:
        from visd.io import atomic_path

        with atomic_path(args.md) as tmp:
            Path(tmp).write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0
