"""Convergence study: does VISD reach GRPO's best eval score in fewer optimizer steps?

Every (method, seed) run starts from the same checkpoint (the SFT warm-up of the main workflow),
reads the same samples and frames, and runs the curriculum phases with the same seed-derived rollout
seeds and step plans — only the recipe differs (``config/recipes/<method>.yaml`` over the base config).
A run executes the same stage functions the workflow's rules call (:func:`visd.rollout.run`,
:func:`visd.reward_stage.run`, :func:`visd.judge.stage.run`, :func:`visd.teacher.run`,
:func:`visd.train.run`, :func:`visd.eval.stage.run`) inside one process, which saves the start-up
of ~10 jobs per phase (Python + torch + accelerate) — on a 2-core machine that start-up cost more
than the tiny model's compute. Its tables land under ``study/<method>/seed-<s>/`` in the main
workflow's layout, so ``visd audit --results`` and ``visd report`` read them as they read a run.
A stage whose output exists is skipped, and the trainer resumes from its state: a killed run rerun
continues where it stopped.

:func:`summarize` turns the eval curves into the study's answer: for every seed, the score GRPO
reaches at best on the schedule (the *target*) and, per method, the first optimizer step at which the
method's score is at least that target (``null`` = never within the schedule); the same on the
seed-mean curves; written as CSV + JSON, and a plot of mean ± min/max score vs step.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from visd import config as cfgmod
from visd.io import atomic_path, params_hash, write_json

RECIPES_DIR = Path(__file__).resolve().parents[1] / "config" / "recipes"
METHOD_RECIPES = ("visd", "grpo", "opsd", "sft")


def deep_merge(base: dict, over: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def method_config(base: Mapping[str, Any], method: str, seed: int, recipes_dir: Path = RECIPES_DIR) -> dict:
    """The base config with ``config/recipes/<method>.yaml`` merged over it and ``seed`` set; validated."""
    path = Path(recipes_dir) / f"{method}.yaml"
    if not path.exists():
        raise cfgmod.ConfigError(f"study method {method!r} has no recipe file {path}; "
                                 f"use one of {sorted(p.stem for p in Path(recipes_dir).glob('*.yaml'))}")
    recipe = yaml.safe_load(path.read_text()) or {}
    return cfgmod.validate(deep_merge(dict(base), {**recipe, "seed": int(seed)}))


def _needs(cfg: dict, phase: int, n_steps: int) -> tuple[bool, bool]:
    """(teacher cache needed, judge needed) for a phase, as the workflow's DAG decides."""
    from visd import losses

    t = cfg["train"]
    recipe = t["recipe"]
    if recipe == "visd":
        teacher = losses.lambda_at(phase * n_steps + 1, t["lam0"], t["anneal_steps"]) > 0 if t["lam0"] > 0 else False
    elif recipe == "opsd":
        teacher = t["opsd"]["teacher"] != "live"
    else:
        teacher = False
    return teacher, teacher and "feedback" in cfg["teacher"]["hint"]


def run_one(cfg: dict, samples: str, frames: Sequence[str], start_policy: str, out_root: str,
            progress: bool = False) -> dict:
    """All curriculum phases of one (method, seed) run under ``out_root``; returns the eval curve."""
    from visd import reward_stage, rollout, teacher, train
    from visd.eval import stage as evaluate
    from visd.judge import stage as judge

    root = Path(out_root)
    phases = cfg["curriculum"]["phases"]
    n_steps = cfg["curriculum"]["steps_per_phase"]
    if n_steps is None:
        raise cfgmod.ConfigError("the study needs curriculum.steps_per_phase (a fixed step count per phase)")
    study = cfg["study"]
    bench = study["benchmark"]
    recipe = cfg["train"]["recipe"]
    shards = range(len(frames))
    policy, ema = start_policy, start_policy
    curve: list[dict] = []
    t_run = time.time()

    def todo(name: str, *outs: Path) -> bool:
        """True when a stage must run (an output is missing); logs the stage."""
        if all(p.exists() for p in outs):
            return False
        print(f"[study] {root.parent.name}/{root.name} {name} ({time.time() - t_run:.0f}s into the run)",
              file=sys.stderr, flush=True)
        return True

    for phase in range(phases):
        need_teacher, need_judge = _needs(cfg, phase, n_steps)
        ro = [root / "rollouts" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        rw = [root / "rewards" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        jd = [root / "judge" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        tc = [root / "teacher" / f"phase-{phase}" / f"shard-{k}.parquet" for k in shards]
        frozen = recipe == "opsd" and cfg["train"]["opsd"]["teacher"] == "frozen"
        teacher_model = start_policy if (phase == 0 or frozen) else ema
        for k in shards:
            if todo(f"phase {phase} rollout shard {k}", ro[k]):
                rollout.run(samples, frames[k], policy, phase,
                            {"seed": cfg["seed"], "rollout": cfg["rollout"], "prompt": cfg["prompt"]}, str(ro[k]),
                            str(root / "rejects" / "rollout" / f"phase-{phase}" / f"shard-{k}.parquet"),
                            progress=progress)
            if todo(f"phase {phase} reward shard {k}", rw[k]):
                reward_stage.run(str(ro[k]), samples, phase, {"curriculum": cfg["curriculum"]}, str(rw[k]))
            if need_judge and todo(f"phase {phase} judge shard {k}", jd[k]):
                judge.run(str(ro[k]), samples, str(jd[k]), cfg["judge"], str(root / "judge_cache"), progress=progress)
            if need_teacher and todo(f"phase {phase} teacher shard {k}", tc[k]):
                teacher.run(samples, frames[k], str(ro[k]), str(jd[k]) if need_judge else None, teacher_model,
                            {"seed": cfg["seed"], "teacher": cfg["teacher"], "prompt": cfg["prompt"]}, str(tc[k]),
                            phase=phase, progress=progress)
        ck = root / "checkpoints" / f"phase-{phase}"
        metrics = root / "metrics" / f"phase-{phase}.parquet"
        if todo(f"phase {phase} train", ck / "policy", ck / "teacher", metrics):
            train.run({"seed": cfg["seed"], "train": cfg["train"], "curriculum": cfg["curriculum"],
                       "rollout": {"group_size": cfg["rollout"]["group_size"]}, "prompt": cfg["prompt"],
                       "teacher": {"top_k": cfg["teacher"]["top_k"]}},
                      phase, samples, list(frames), [str(p) for p in ro], [str(p) for p in rw], policy, str(ck),
                      teacher_in=ema, teacher_cache=[str(p) for p in tc] if need_teacher else (),
                      judge_paths=[str(p) for p in jd] if need_judge else (), metrics_path=str(metrics),
                      progress=progress)
        policy, ema = str(ck / "policy"), str(ck / "teacher")
        if (phase + 1) % study["eval_every"] == 0 or phase == phases - 1:
            tag = root / "eval" / f"phase-{phase}"
            if todo(f"phase {phase} evaluate", tag / f"{bench}.json", tag / f"{bench}.parquet"):
                evaluate.run(samples, list(frames), policy, phase, bench,
                             {"evaluate": cfg["evaluate"], "prompt": cfg["prompt"]},
                             str(tag / f"{bench}.parquet"), str(tag / f"{bench}.json"),
                             str(root / "rejects" / "evaluate" / f"phase-{phase}" / f"{bench}.parquet"),
                             step=evaluate.checkpoint_step(policy), progress=progress)
            summary = json.loads((tag / f"{bench}.json").read_text())
            curve.append({"phase": phase, "step": summary["step"], "score": summary["metrics"].get(study["metric"])})
    return {"curve": curve, "seconds": round(time.time() - t_run, 1)}


# ------------------------------------------------------------------------------------------ summary
def steps_to_reach(curve: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """First step of ``curve`` (sorted by step) whose score is ≥ ``target``; None if never."""
    for p in sorted(curve, key=lambda p: p["step"]):
        if p["score"] is not None and p["score"] >= target - 1e-9:
            return int(p["step"])
    return None


def mean_curve(curves: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Seed-mean score per step (steps present in every curve)."""
    steps = sorted(set.intersection(*[{p["step"] for p in c} for c in curves])) if curves else []
    out = []
    for s in steps:
        vals = [next(p["score"] for p in c if p["step"] == s) for c in curves]
        out.append({"step": s, "score": sum(vals) / len(vals), "min": min(vals), "max": max(vals)})
    return out


def summarize(runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]], start_score: float | None,
              baseline: str = "grpo") -> dict:
    """Steps each method needs to reach ``baseline``'s best eval score, per seed and on the seed means.

    ``runs``: method → seed → curve (``[{step, score}]``, the start policy's point excluded).
    """
    if baseline not in runs:
        raise ValueError(f"the study needs the baseline method {baseline!r}; it ran {sorted(runs)}")
    seeds = sorted(set.intersection(*[set(s) for s in runs.values()]))
    rows = []
    for seed in seeds:
        target = max(p["score"] for p in runs[baseline][seed])
        for method in runs:
            curve = runs[method][seed]
            rows.append({"seed": seed, "method": method, "target": round(target, 3),
                         "best": round(max(p["score"] for p in curve), 3),
                         "steps_to_target": steps_to_reach(curve, target)})
    means = {m: mean_curve([runs[m][s] for s in seeds]) for m in runs}
    mean_target = max(p["score"] for p in means[baseline])
    mean_rows = [{"method": m, "target": round(mean_target, 3), "best": round(max(p["score"] for p in means[m]), 3),
                  "steps_to_target": steps_to_reach(means[m], mean_target),
                  "seeds_reaching": sum(1 for r in rows if r["method"] == m and r["steps_to_target"] is not None)}
                 for m in runs]
    return {"baseline": baseline, "seeds": seeds, "start_score": start_score, "per_seed": rows, "mean": mean_rows,
            "curves": {m: {str(s): list(runs[m][s]) for s in seeds} for m in runs}, "mean_curves": means}


def plot(summary: Mapping[str, Any], out_png: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    start = summary.get("start_score")
    for method, curve in summary["mean_curves"].items():
        steps = ([0] if start is not None else []) + [p["step"] for p in curve]
        mean = ([start] if start is not None else []) + [p["score"] for p in curve]
        lo = ([start] if start is not None else []) + [p["min"] for p in curve]
        hi = ([start] if start is not None else []) + [p["max"] for p in curve]
        line, = ax.plot(steps, mean, marker="o", label=method)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
    target = next(r["target"] for r in summary["mean"] if r["method"] == summary["baseline"])
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"{summary['baseline']} best (seed mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"eval {metric} (%)")
    ax.set_title(f"Convergence from the same start checkpoint ({len(summary['seeds'])} seeds; band = min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png, ".png.tmp") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_table(summary: Mapping[str, Any], out_csv: str) -> None:
    with atomic_path(out_csv, ".csv.tmp") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "target", "best", "steps_to_target"])
        for r in summary["per_seed"]:
            w.writerow([r["method"], r["seed"], r["target"], r["best"], r["steps_to_target"]])
        for r in summary["mean"]:
            w.writerow([r["method"], "mean", r["target"], r["best"], r["steps_to_target"]])


# ------------------------------------------------------------------------------------------ CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="all phases of one (method, seed) run, from the shared start checkpoint")
    r.add_argument("--params", required=True, help="the full workflow config as JSON (or @file)")
    r.add_argument("--method", required=True, help="a recipe name (config/recipes/<method>.yaml)")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--samples", required=True)
    r.add_argument("--frames", required=True, nargs="+")
    r.add_argument("--start-policy", required=True, help="checkpoint every run starts from (models/sft)")
    r.add_argument("--out-root", required=True, help="results/study/<method>/seed-<s>")
    r.add_argument("--done", required=True, help="JSON written last: the run's eval curve")
    r.add_argument("--progress", action="store_true")
    s = sub.add_parser("summarize", help="table + plot of steps to reach the baseline's best score")
    s.add_argument("--runs", required=True, nargs="+", help="done.json files of the runs (study/<m>/seed-<s>/done.json)")
    s.add_argument("--start-eval", help="eval/start/<bench>.json: the shared start point of every curve")
    s.add_argument("--metric", default="score")
    s.add_argument("--baseline", default="grpo")
    s.add_argument("--csv", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--png", required=True)


def main(args: argparse.Namespace) -> int:
    if args.action == "run":
        try:
            base = cfgmod.parse_params(args.params)
            base.pop("version", None)  # the workflow's stage version, not a config key
            cfg = method_config(base, args.method, args.seed)
        except cfgmod.ConfigError as e:
            print(f"visd study: {e}", file=sys.stderr)
            return 2
        result = run_one(cfg, args.samples, args.frames, args.start_policy, args.out_root, progress=args.progress)
        write_json({"method": args.method, "seed": args.seed, "config_hash": params_hash(cfg),
                    **result}, args.done)
        return 0
    runs: dict[str, dict[int, list]] = {}
    for path in args.runs:
        d = json.loads(Path(path).read_text())
        runs.setdefault(d["method"], {})[int(d["seed"])] = d["curve"]
    start = None
    if args.start_eval:
        start = json.loads(Path(args.start_eval).read_text())["metrics"].get(args.metric)
    summary = summarize(runs, start, baseline=args.baseline)
    write_table(summary, args.csv)
    plot(summary, args.png, args.metric)
    write_json(summary, args.json)
    for r in summary["mean"]:
        print(f"{r['method']:>6}: best {r['best']:.1f}, steps to {summary['baseline']}'s best "
              f"({r['target']:.1f}): {r['steps_to_target']} (seed means); seeds reaching it: {r['seeds_reaching']}",
              file=sys.stderr)
    return 0
