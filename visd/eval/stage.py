"""Evaluate stage: greedy decoding of one benchmark with one checkpoint, scored with the published metrics.

A benchmark (config ``evaluate.benchmarks``) is a selection of ``samples.parquet``: a split and,
optionally, a list of sources. Every selected sample is asked once in the student view, through the
same frames and prompt pipeline as training (:func:`visd.rollout.build_requests`), and greedy-decoded
by the configured engine (``hf`` or ``vllm``), ``evaluate.batch_size`` questions per engine call (the hf
engine decodes them as one padded batch, :meth:`visd.engines.hf.HFEngine.generate_batch`). What is
computed from the answers depends on the items:

- every item gets a **task score** — the METHODS §5 metric of its task type (R1 accuracy for mcq /
  open / numeric, temporal IoU for temporal, box IoU for spatial, vIoU for spatio-temporal) and the
  R7 format reward; ``score`` is their mean (percent), also per task type;
- **V-STaR chains** (samples sharing ``item_id`` with ``chain_step`` what / when / where) are scored
  with :func:`visd.eval.vstar.summarize`. Chain 1 = what → when → where with the *where* question
  asked with the ground-truth window; chain 2 = what → where → when with the *when* question asked with
  the ground-truth boxes. Each question is one turn; the ground-truth context of the second question
  is appended to its text (two extra generations per item: ``chain1_where`` and ``chain2_when``). Acc
  comes from the LLM judge (0–3, correct iff ≥ 2) when ``evaluate.judge.backend: llm``, otherwise the
  offline fallback (reported as ``Acc_offline``);
- **MCQ** items are scored with :func:`visd.eval.mcq.summarize` (accuracy overall and per task).

Outputs: ``eval/<tag>/<bench>.parquet`` (one row per generation, schema :data:`EVAL_ROWS`) and
``eval/<tag>/<bench>.json`` (``{"benchmark", "kind", "phase", "step", "policy_hash", "n_items",
"metrics"}``; ``metrics`` is flat: ``score``, ``score/<task>``, ``format``, ``vstar/<metric>``,
``mcq/<metric>``; every value is a percentage). ``<tag>`` is ``start`` or ``phase-P``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from visd import config as cfgmod
from visd import rewards
from visd.data.importers import fmt_box, fmt_time
from visd.engines.base import Sampling, get_engine
from visd.eval import mcq, vstar
from visd.grounding import second_key
from visd.io import Rejects, checkpoint_hash, params_hash, write_json, write_parquet

EVAL_ROWS = pa.schema(
    [
        ("benchmark", pa.string()),
        ("phase", pa.int32()),  # -1 = the start policy
        ("item_id", pa.string()),
        ("sample_id", pa.string()),
        ("task_type", pa.string()),
        ("chain_step", pa.string()),  # what | when | where | null
        ("variant", pa.string()),  # plain | chain1_where (GT window given) | chain2_when (GT boxes given)
        ("question", pa.string()),  # as asked (with the chain context, if any)
        ("answer", pa.string()),  # ground truth
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("n_tokens", pa.int32()),
        ("score", pa.float64()),  # task metric in [0, 1]
        ("format", pa.float64()),  # R7 in [0, 1]
        ("judge_score", pa.int32()),  # V-STaR what: LLM judge 0-3 (null: no judge / unparsable)
        ("policy_hash", pa.string()),
        ("params_hash", pa.string()),
    ]
)

VARIANTS = ("plain", "chain1_where", "chain2_when")


class EvalError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ selection
def benchmark_config(evaluate_cfg: Mapping[str, Any], name: str) -> dict:
    for b in evaluate_cfg.get("benchmarks") or []:
        if b["name"] == name:
            return {"split": "eval", "sources": None, "limit": None, **b}
    known = [b["name"] for b in evaluate_cfg.get("benchmarks") or []]
    raise EvalError(f"benchmark {name!r} is not configured; evaluate.benchmarks names {known}")


def select(samples: Sequence[Mapping[str, Any]], bench: Mapping[str, Any]) -> list[dict]:
    """The benchmark's samples, sorted by id; a chain item is kept or cut as a whole by ``limit``."""
    rows = [dict(s) for s in samples if s["split"] == bench["split"]
            and (bench.get("sources") is None or s["source"] in bench["sources"])]
    rows.sort(key=lambda s: (s.get("item_id") or s["sample_id"], s["sample_id"]))
    if bench.get("limit"):
        keep, items = [], []
        for s in rows:
            item = s.get("item_id") or s["sample_id"]
            if item not in items:
                if len(items) == bench["limit"]:
                    break
                items.append(item)
            keep.append(s)
        rows = keep
    return rows


def chains(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """item_id → {what, when, where} for items that have all three chain steps."""
    by_item: dict[str, dict[str, dict]] = defaultdict(dict)
    for s in samples:
        if s.get("chain_step") in ("what", "when", "where") and s.get("item_id"):
            by_item[s["item_id"]][s["chain_step"]] = s
    return {k: v for k, v in by_item.items() if len(v) == 3}


def gt_boxes(where: Mapping[str, Any]) -> dict[int, list[float]]:
    """Ground-truth boxes of a *where* sample keyed by whole second (first object of each key frame)."""
    out = {}
    for t, objs in rewards.key_frames(where):
        if objs:
            out[second_key(t)] = list(objs[0][1])
    return out


def _object_name(where: Mapping[str, Any]) -> str:
    for _, objs in rewards.key_frames(where):
        if objs:
            return objs[0][0]
    return "object"


def window_context(where: Mapping[str, Any]) -> str:
    """Chain 1: the *where* question is asked with the ground-truth window."""
    s, e = where["answer_window"]
    return f"The {_object_name(where)} is relevant from <t>{fmt_time(s)}</t>s to <t>{fmt_time(e)}</t>s."


def boxes_context(where: Mapping[str, Any]) -> str:
    """Chain 2: the *when* question is asked with the ground-truth boxes."""
    name = _object_name(where)
    claims = ", ".join(f"<box>{fmt_box(b)}</box>at<t>{fmt_time(t)}</t>s" for t, b in sorted(gt_boxes(where).items()))
    return f"The {name} is at {claims}."


def questions(samples: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict]]:
    """(variant, sample-as-asked) for every generation the benchmark needs."""
    out = [("plain", dict(s)) for s in samples]
    for item, c in sorted(chains(samples).items()):
        if c["when"].get("answer_window") and gt_boxes(c["where"]):
            w = dict(c["where"])
            w["question"] = f"{w['question']} {window_context(c['where'])}"
            out.append(("chain1_where", w))
            t = dict(c["when"])
            t["question"] = f"{t['question']} {boxes_context(c['where'])}"
            out.append(("chain2_when", t))
    return out


# ------------------------------------------------------------------------------------------ scoring
def task_score(completion: str, sample: Mapping[str, Any]) -> float:
    """The METHODS §5 metric of the sample's task type, in [0, 1]."""
    tt = sample.get("task_type")
    if tt in ("mcq", "open", "numeric"):
        return rewards.r_accuracy(completion, sample)
    if tt == "temporal":
        return rewards.r_temporal_iou(completion, sample)
    if tt in ("spatial", "spatiotemporal"):
        return rewards.r_box_iou(completion, sample)
    return 0.0


def vstar_items(rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The per-item dicts :func:`visd.eval.vstar.summarize` takes, from the generated rows."""
    got = {(r["sample_id"], r["variant"]): r for r in rows}
    items = []
    for item_id, c in sorted(chains(samples).items()):
        what, when, where = c["what"], c["when"], c["where"]
        need = [(what["sample_id"], "plain"), (when["sample_id"], "plain"), (where["sample_id"], "plain"),
                (where["sample_id"], "chain1_where"), (when["sample_id"], "chain2_when")]
        if any(k not in got for k in need):
            continue
        w = got[(what["sample_id"], "plain")]
        items.append({
            "item_id": item_id,
            "duration_s": float(what.get("duration_s") or 0.0),
            "what": {"prediction": w["completion"], "answer": what.get("answer") or "",
                     "judge_score": w["judge_score"]},
            "gt_window": list(when["answer_window"]),
            "gt_boxes": gt_boxes(where),
            "chain1": {"when": got[(when["sample_id"], "plain")]["completion"],
                       "where": got[(where["sample_id"], "chain1_where")]["completion"]},
            "chain2": {"where": got[(where["sample_id"], "plain")]["completion"],
                       "when": got[(when["sample_id"], "chain2_when")]["completion"]},
        })
    return items


def summarize(rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> tuple[str, dict]:
    """(kind, flat metrics in percent) of a benchmark's generated rows."""
    plain = [r for r in rows if r["variant"] == "plain"]
    metrics: dict[str, float] = {}
    if plain:
        metrics["score"] = 100.0 * sum(r["score"] for r in plain) / len(plain)
        metrics["format"] = 100.0 * sum(r["format"] for r in plain) / len(plain)
        by_task: dict[str, list[float]] = defaultdict(list)
        for r in plain:
            by_task[r["task_type"]].append(r["score"])
        for task, vals in sorted(by_task.items()):
            metrics[f"score/{task}"] = 100.0 * sum(vals) / len(vals)
    kinds = []
    items = vstar_items(rows, samples)
    if items:
        kinds.append("vstar")
        summary = vstar.summarize(items)
        for k, v in summary.items():
            if k == "by_duration":
                for bucket, sub in v.items():
                    for kk, vv in sub.items():
                        if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                            metrics[f"vstar/{bucket}/{kk}"] = float(vv)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[f"vstar/{k}"] = float(v)
            elif k == "acc_metric":
                metrics["vstar/acc_is_llm_judge"] = 100.0 if v == "Acc" else 0.0
    mcq_rows = [r for r in plain if r["task_type"] == "mcq"]
    if mcq_rows:
        kinds.append("mcq")
        sid = {s["sample_id"]: s for s in samples}
        summary = mcq.summarize([{"item_id": r["sample_id"], "task": _task_name(sid[r["sample_id"]]),
                                  "prediction": r["completion"], "answer": r["answer"]} for r in mcq_rows])
        for k, v in summary.items():
            if k == "by_task":
                for task, sub in v.items():
                    metrics[f"mcq/{task}/accuracy"] = float(sub["accuracy"])
            elif isinstance(v, (int, float)):
                metrics[f"mcq/{k}"] = float(v)
    kind = "+".join(kinds) if kinds else "tasks"
    return kind, metrics


def _task_name(sample: Mapping[str, Any]) -> str:
    """The benchmark's own task label (meta.task / meta.template / Video-MME's task_type) or the task type."""
    try:
        meta = json.loads(sample.get("meta") or "{}")
    except (TypeError, ValueError):
        meta = {}
    for key in ("task", "template", "task_type", "domain"):
        if isinstance(meta, dict) and meta.get(key):
            return str(meta[key])
    return str(sample.get("task_type"))


# ------------------------------------------------------------------------------------------ judge
def judge_what(rows: list[dict], samples_by_id: Mapping[str, Mapping[str, Any]], judge_cfg: Mapping[str, Any]) -> None:
    """Fill ``judge_score`` of the V-STaR *what* rows with the LLM judge (0–3), re-asking when unparsable."""
    from visd.judge.stage import build_batch_chat

    targets = [r for r in rows if r["variant"] == "plain" and r["chain_step"] == "what"]
    if not targets:
        return
    batch, _ = build_batch_chat(dict(judge_cfg))
    pending = list(targets)
    for _ in range(int(judge_cfg.get("max_attempts", 3))):
        if not pending:
            break
        convs = [vstar.judge_messages(samples_by_id[r["sample_id"]]["question"], r["answer"],
                                      vstar.answer_text(r["completion"])) for r in pending]
        replies = batch(convs)
        still = []
        for r, rep in zip(pending, replies):
            score = vstar.parse_judge_score(getattr(rep, "text", None) or "")
            if score is None:
                still.append(r)
            else:
                r["judge_score"] = score
        pending = still
    # unparsable after every attempt: counted as wrong (score 0), never silently dropped
    for r in pending:
        r["judge_score"] = 0


def judge_section(evaluate_cfg: Mapping[str, Any]) -> dict | None:
    """The Acc judge config (``evaluate.judge``) with the ``judge`` section's defaults, or None (offline)."""
    jc = dict(evaluate_cfg.get("judge") or {})
    backend = jc.pop("backend", "none")
    if backend in (None, "none", "rules"):
        return None
    if backend != "llm":
        raise cfgmod.ConfigError(f"config key evaluate.judge.backend: {backend!r} is not one of none, llm")
    try:
        return cfgmod.section("judge", {**jc, "backend": "llm"})
    except cfgmod.ConfigError as e:
        raise cfgmod.ConfigError(str(e).replace("judge.", "evaluate.judge.")) from None


# ------------------------------------------------------------------------------------------ the stage
def run(samples_path: str, frames_paths: Sequence[str], policy: str, phase: int, bench_name: str, params: dict,
        out_path: str, json_path: str, rejects_path: str | None = None, step: int | None = None,
        progress: bool = True) -> dict:
    from visd.rollout import build_requests

    ecfg = cfgmod.section("evaluate", params.get("evaluate"))
    pcfg = cfgmod.section("prompt", params.get("prompt"))
    bench = benchmark_config(ecfg, bench_name)
    jcfg = judge_section(ecfg)
    all_samples = pq.read_table(samples_path).to_pylist()
    chosen = select(all_samples, bench)
    if not chosen:
        raise EvalError(f"benchmark {bench_name!r} selects no samples from {samples_path} (split "
                        f"{bench['split']!r}, sources {bench.get('sources')}); check evaluate.benchmarks or data.sources")
    frames_by_id: dict[str, dict] = {}
    want = {s["sample_id"] for s in chosen}
    for path in frames_paths:
        for r in pq.read_table(path).to_pylist():
            if r["sample_id"] in want:
                frames_by_id[r["sample_id"]] = r
    rejects = Rejects("evaluate")
    asked = []
    for variant, s in questions(chosen):
        if s["sample_id"] not in frames_by_id:
            if variant == "plain":
                rejects.add(s["sample_id"], "no_frames", "sample has no frames row (rejected by extract_frames)",
                            source=samples_path)
            continue
        asked.append((variant, s))
    engine_args = dict(ecfg.get("engine_args", {}))
    if ecfg["backend"] == "hf":  # vLLM batches whatever it is given
        engine_args.setdefault("batch_size", ecfg["batch_size"])
    engine = get_engine(ecfg["backend"], policy, dtype=ecfg["dtype"], seed=0, **engine_args)
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(policy)
    sampling = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=ecfg["max_new_tokens"], seed=0)
    policy_hash = checkpoint_hash(policy)
    # batch_size changes how fast, not what is generated: it stays out of the rows' params hash
    phash = params_hash({"evaluate": {k: v for k, v in ecfg.items() if k != "batch_size"}, "prompt": pcfg,
                         "benchmark": bench})
    rows, t0, n_tok = [], time.time(), 0
    size = int(ecfg["batch_size"])
    with tqdm(total=len(asked), desc=f"evaluate {bench_name} phase {phase}", unit="question",
              disable=not progress, file=sys.stderr) as bar:
        for i in range(0, len(asked), size):
            chunk = asked[i : i + size]
            reqs = []
            for variant, s in chunk:
                req, _ = build_requests(tokenizer, {s["sample_id"]: s}, [frames_by_id[s["sample_id"]]], pcfg)[0]
                req.request_id = f"{s['sample_id']}/{variant}"
                reqs.append(req)
            for (variant, s), c in zip(chunk, _generate(engine, reqs, sampling, rejects, samples_path)):
                if c is None:
                    continue
                n_tok += len(c.token_ids)
                rows.append({
                    "benchmark": bench_name, "phase": phase, "item_id": s.get("item_id") or s["sample_id"],
                    "sample_id": s["sample_id"], "task_type": s["task_type"], "chain_step": s.get("chain_step"),
                    "variant": variant, "question": s["question"], "answer": s.get("answer"), "completion": c.text,
                    "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids),
                    "score": float(task_score(c.text, s)), "format": float(rewards.r_format(c.text, s)),
                    "judge_score": None, "policy_hash": policy_hash, "params_hash": phash,
                })
            bar.update(len(chunk))
    if jcfg is not None:
        judge_what(rows, {s["sample_id"]: s for s in chosen}, jcfg)
    kind, metrics = summarize(rows, chosen)
    rows.sort(key=lambda r: (r["item_id"], r["sample_id"], VARIANTS.index(r["variant"])))
    write_parquet(pa.Table.from_pylist(rows, schema=EVAL_ROWS), out_path)
    n_items = len({r["item_id"] for r in rows})
    summary = {"benchmark": bench_name, "kind": kind, "phase": phase, "step": step, "policy_hash": policy_hash,
               "n_items": n_items, "n_questions": len(rows), "metrics": metrics}
    write_json(summary, json_path)
    if rejects_path:
        rejects.write(rejects_path)
    dt = time.time() - t0
    print(f"{rejects.summary(len(rows))}; evaluate {bench_name} phase {phase}: {len(rows)} questions, "
          f"{n_tok} tokens in {dt:.1f}s; score {metrics.get('score', float('nan')):.1f}", file=sys.stderr)
    return summary


def _generate(engine, reqs: list, sampling: Sampling, rejects: Rejects, source: str) -> list:
    """Greedy completions of a chunk of requests, None where generation failed (and was rejected).

    The chunk goes to the engine in one call (the hf engine decodes it as one batch); if that fails,
    each request is retried alone, so one bad prompt is rejected and never loses the others.
    """
    try:
        return [g[0] for g in engine.generate(reqs, 1, sampling)]
    except Exception as e:  # noqa: BLE001 — one bad prompt never loses the benchmark
        if len(reqs) > 1:
            return [c for req in reqs for c in _generate(engine, [req], sampling, rejects, source)]
        rejects.add(reqs[0].request_id, "generation_failed", f"{type(e).__name__}: {e}", source=source)
        return [None]


def checkpoint_step(policy: str) -> int | None:
    """Global optimizer step of a checkpoint the trainer wrote (``visd_train.json``), or None (start policy)."""
    info = Path(policy) / "visd_train.json"
    if not info.exists():
        return None
    try:
        return int(json.loads(info.read_text()).get("global_step"))
    except (ValueError, TypeError, AttributeError):
        return None


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({evaluate, prompt}) or @file; defaults from the schema")
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--frames", required=True, nargs="+", help="results/frames/shard-*.parquet")
    p.add_argument("--policy", required=True, help="HF model folder to evaluate")
    p.add_argument("--phase", default="start", help="curriculum phase of the checkpoint, or 'start'")
    p.add_argument("--benchmark", required=True, help="a name from evaluate.benchmarks")
    p.add_argument("--out", required=True, help="results/eval/<tag>/<bench>.parquet (per-question rows)")
    p.add_argument("--json", required=True, help="results/eval/<tag>/<bench>.json (summary metrics)")
    p.add_argument("--rejects", help="results/rejects/evaluate/<tag>/<bench>.parquet")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        params = cfgmod.parse_params(args.params)
        phase = -1 if args.phase == "start" else int(args.phase)
        run(args.samples, args.frames, args.policy, phase, args.benchmark, params, args.out, args.json,
            args.rejects, step=checkpoint_step(args.policy), progress=not args.no_progress)
    except (cfgmod.ConfigError, ValueError) as e:  # EvalError is a ValueError
        print(f"visd evaluate: {e}", file=sys.stderr)
        return 2
    return 0
