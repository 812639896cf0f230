"""Judge stage: one structured judge record per rollout of a shard (``visd judge``).

Reads ``rollouts/phase-P/shard-K.parquet`` (``rollout_id``, ``sample_id``, ``completion_text``), joins
``samples.parquet`` on ``sample_id``, judges every rollout with the configured judge and writes
``judge/phase-P/shard-K.parquet`` (schema :data:`visd.judge.record.JUDGE`, input order) atomically.

**Config** (the ``judge`` section; defaults in the config schema): ``backend`` rules | llm; for ``llm``:
``engine`` openai | hf | vllm, ``base_url``, ``model`` (empty with ``openai`` = the first model the
server lists, resolved before hashing), ``api_key_env`` (name of the variable holding the key; the key
itself is never stored or logged), ``timeout_s``, ``max_retries``, ``retry_backoff_s``,
``concurrency``, ``max_attempts``, ``temperature``, ``max_tokens``, ``json_mode``.

**Judge config hash** = ``params_hash`` of the keys that change what the judge says (backend, engine,
model, temperature, max_tokens, json_mode, max_attempts) + the prompt templates' hash + the rules
judge's version + the stage's record version. Transport settings (base_url, api_key_env, timeout,
retries, concurrency) are left out: moving the same model to another server keeps the cache.

**Cache** (LLM judge only; the rules judge is cheaper than reading a cache)::

    <cache_dir>/<judge_config_hash>/config.json                      what the hash stands for (no secrets)
    <cache_dir>/<judge_config_hash>/part-<utc>-<pid>-<rand>.parquet  JUDGE rows, keyed by ``cache_key``

``cache_key`` = sha256 of the sample's judged fields (id, task type, question, options, answer,
window, key frames) and the completion text, so a corrected annotation is judged afresh. Parts are
written atomically (temp + rename) every ``FLUSH_EVERY`` new records and at exit, never rewritten, so
parallel shard jobs never race and a killed job keeps what it paid for. Identical completions of one
sample (common for short answers) are judged once per run. Transport failures (the fallback after the
client's retries) are not cached: a rerun asks again; everything else is, including fallbacks after
unparsable replies. When *every* rollout that needed the LLM failed on transport, the stage fails
(nothing written) instead of silently producing a rules-only table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm

from visd import config as vconfig
from visd.io import canonical_json, params_hash, write_json, write_parquet
from visd.judge import llm, rules
from visd.judge.record import JUDGE, JudgeRecord, to_table

STAGE = "judge"
RECORD_VERSION = 1
FLUSH_EVERY = 256  # new cache records per part file
FLUSH_SECONDS = 120.0  # ... or this long since the last part, whichever comes first
ROLLOUT_COLUMNS = ("rollout_id", "sample_id", "completion_text")
SAMPLE_FIELDS = ("sample_id", "task_type", "question", "options", "answer", "answer_window", "key_frames")
SEMANTIC_KEYS = ("backend", "engine", "model", "temperature", "max_tokens", "json_mode", "max_attempts")


class JudgeError(ValueError):
    """The inputs of the judge stage are inconsistent; the message names the file, id and fix."""


# --------------------------------------------------------------------------------------------- config
def judge_section(cfg: Mapping[str, Any] | None) -> dict:
    """The ``judge`` config with schema defaults filled in."""
    return vconfig.section("judge", dict(cfg or {}))


def config_hash(cfg: Mapping[str, Any]) -> str:
    """The judge config hash (see the module docstring); ``cfg`` must carry the resolved model name."""
    if cfg["backend"] == "rules":
        return params_hash({"backend": "rules", "rules": rules.RULES_VERSION, "record": RECORD_VERSION})
    return params_hash(
        {
            **{k: cfg.get(k) for k in SEMANTIC_KEYS},
            "prompt": llm.prompt_hash(),
            "rules": rules.RULES_VERSION,
            "record": RECORD_VERSION,
        }
    )


def rollout_key(sample: Mapping[str, Any], completion_text: str | None) -> str:
    """Cache key of one rollout: sha256 of the sample's judged fields and the completion text."""
    h = hashlib.sha256(canonical_json({k: sample.get(k) for k in SAMPLE_FIELDS}).encode())
    h.update(b"\x00")
    h.update((completion_text or "").encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()[:32]


def public_config(cfg: Mapping[str, Any]) -> dict:
    """The config as stored beside the cache: the key's variable *name* only, never its value."""
    return {k: v for k, v in sorted(cfg.items())}


# --------------------------------------------------------------------------------------------- cache
class JudgeCache:
    """Append-only Parquet parts under ``<root>/<config_hash>/`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, chash: str, meta: Mapping[str, Any] | None = None):
        self.dir = Path(root) / chash
        self.rows: dict[str, dict] = {}
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.parts_written: list[Path] = []
        if self.dir.is_dir():
            for part in sorted(self.dir.glob("part-*.parquet")):
                try:
                    for row in pq.read_table(part).to_pylist():
                        if row.get("cache_key"):
                            self.rows.setdefault(row["cache_key"], row)
                except Exception as e:  # noqa: BLE001 — a damaged part costs re-judging, never the stage
                    print(f"[{STAGE}] warning: ignoring unreadable cache part {part}: {e}", file=sys.stderr)
        if meta is not None and not (self.dir / "config.json").exists():
            write_json(dict(meta), self.dir / "config.json")

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, rec: JudgeRecord) -> None:
        row = rec.to_row()
        self.rows[rec.cache_key] = row
        self.pending.append(row)
        if len(self.pending) >= FLUSH_EVERY or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> Path | None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.dir / f"part-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        write_parquet(to_table([JudgeRecord.from_row(r) for r in self.pending]), path)
        self.pending = []
        self.parts_written.append(path)
        return path


# --------------------------------------------------------------------------------------------- backends
def build_batch_chat(cfg: dict) -> tuple[llm.BatchChat, dict]:
    """The batch chat function of an LLM judge config and the config with the resolved model name."""
    cfg = dict(cfg)
    if cfg["engine"] == "openai":
        from visd.engines.openai import OpenAIClient

        if not cfg.get("base_url"):
            raise vconfig.ConfigError(
                "judge.base_url must be set for judge.engine=openai, e.g. http://127.0.0.1:8000/v1")
        client = OpenAIClient(
            cfg["base_url"], cfg.get("model") or None, cfg.get("api_key_env") or None,
            timeout_s=cfg["timeout_s"], max_retries=cfg["max_retries"], backoff_s=cfg["retry_backoff_s"],
            concurrency=cfg["concurrency"],
        )
        cfg["model"] = client.resolve_model()
        return llm.batch_from_openai(client, temperature=cfg["temperature"], max_tokens=cfg["max_tokens"],
                                     json_mode=cfg["json_mode"]), cfg
    if not cfg.get("model"):
        raise vconfig.ConfigError(f"judge.model must name a model folder for judge.engine={cfg['engine']}")
    from transformers import AutoTokenizer

    from visd.engines.base import Sampling, get_engine

    engine = get_engine(cfg["engine"], cfg["model"])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    sampling = Sampling(temperature=cfg["temperature"], top_p=1.0, max_new_tokens=cfg["max_tokens"])
    return llm.batch_from_engine(engine, tok, sampling), cfg


def build_llm_judge(cfg: dict, chash_of: Any = config_hash) -> tuple[llm.LLMJudge, dict]:
    """The LLM judge of ``cfg`` and the config with the resolved model name (for hashing)."""
    batch, cfg = build_batch_chat(cfg)
    judge = llm.LLMJudge(batch, model=str(cfg["model"]), max_attempts=cfg["max_attempts"],
                         judge_config_hash=chash_of(cfg))
    return judge, cfg


# --------------------------------------------------------------------------------------------- the stage
def _read_rollouts(path: str | os.PathLike) -> list[dict]:
    names = pq.read_schema(path).names
    missing = [c for c in ROLLOUT_COLUMNS if c not in names]
    if missing:
        raise JudgeError(f"rollouts table {path} lacks column(s) {missing}; it must be written by `visd rollout`")
    return pq.read_table(path, columns=list(ROLLOUT_COLUMNS)).to_pylist()


def _read_samples(path: str | os.PathLike, ids: set[str]) -> dict[str, dict]:
    names = pq.read_schema(path).names
    cols = [c for c in SAMPLE_FIELDS if c in names]
    return {r["sample_id"]: r for r in pq.read_table(path, columns=cols).to_pylist() if r["sample_id"] in ids}


def run(
    rollouts_path: str | os.PathLike,
    samples_path: str | os.PathLike,
    out_path: str | os.PathLike,
    judge_cfg: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    batch_chat: llm.BatchChat | None = None,
) -> dict:
    """Judge every rollout of ``rollouts_path``; write ``out_path``; return counts.

    ``batch_chat`` overrides the configured LLM backend (a ``list[messages] -> list[Reply]`` function,
    e.g. :func:`visd.judge.llm.batch_from_chat` around any ``complete(prompt) -> str``); its model
    name is ``judge.model`` (or ``"custom"``).
    """
    t0 = time.perf_counter()
    cfg = judge_section(judge_cfg)
    rollouts = _read_rollouts(rollouts_path)
    samples = _read_samples(samples_path, {r["sample_id"] for r in rollouts})
    for r in rollouts:
        if r["sample_id"] not in samples:
            raise JudgeError(
                f"rollout {r['rollout_id']} of {rollouts_path} refers to sample_id {r['sample_id']!r}, which is not in "
                f"{samples_path}; rerun the rollout stage against this samples table"
            )
    stats: dict[str, Any] = {"rollouts": len(rollouts), "backend": cfg["backend"]}
    bar = {"desc": f"{STAGE} {Path(out_path).name}", "unit": "rollout", "mininterval": 2.0,
           "disable": not progress, "file": sys.stderr}

    if cfg["backend"] == "rules":
        chash = config_hash(cfg)
        records = []
        for r in tqdm(rollouts, **bar):
            rec = rules.judge(samples[r["sample_id"]], r["completion_text"], r["rollout_id"], judge_config_hash=chash)
            rec.cache_key = rollout_key(samples[r["sample_id"]], r["completion_text"])
            records.append(rec)
        stats.update(calls=0, cache_hits=0)
    else:
        if batch_chat is not None:
            cfg = dict(cfg, model=cfg.get("model") or "custom")
            judge = llm.LLMJudge(batch_chat, model=str(cfg["model"]), max_attempts=cfg["max_attempts"],
                                 judge_config_hash=config_hash(cfg))
        else:
            judge, cfg = build_llm_judge(cfg)
        chash = judge.judge_config_hash
        cache = JudgeCache(cache_dir, chash, meta={"judge": public_config(cfg), "prompt_hash": judge.prompt_hash,
                                                   "rules_version": rules.RULES_VERSION}) if cache_dir else None
        keys = [rollout_key(samples[r["sample_id"]], r["completion_text"]) for r in rollouts]
        fresh: dict[str, JudgeRecord] = {}
        todo: list[tuple[str, int]] = []  # (key, first rollout index) to judge now
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if (cache is None or cache.get(k) is None) and k not in seen:
                seen.add(k)
                todo.append((k, i))
        chunk = max(32, 8 * int(cfg.get("concurrency") or 1))
        per_key = Counter(keys)
        hits = len(rollouts) - sum(per_key[k] for k in seen)
        try:
            with tqdm(total=len(rollouts), **bar) as pbar:
                pbar.update(hits)
                for c0 in range(0, len(todo), chunk):
                    part = todo[c0:c0 + chunk]
                    items = [(rollouts[i]["rollout_id"], samples[rollouts[i]["sample_id"]],
                              rollouts[i]["completion_text"]) for _, i in part]
                    for (k, _), rec in zip(part, judge.judge_many(items)):
                        rec.cache_key = k
                        fresh[k] = rec
                        cacheable = rec.parse_status != "not_applicable" and not llm.is_transport_failure(rec)
                        if cache is not None and cacheable:
                            cache.add(rec)
                    pbar.update(sum(per_key[k] for k, _ in part))
        finally:
            if cache is not None:
                cache.flush()
        transport = [rec for rec in fresh.values() if llm.is_transport_failure(rec)]
        if transport and len(transport) == sum(1 for rec in fresh.values() if rec.parse_status != "not_applicable"):
            raise JudgeError(
                f"every call of the LLM judge failed (connection, timeout or HTTP error after retries) for the "
                f"{len(transport)} rollouts of {rollouts_path}; first error: {transport[0].error}; check judge.base_url, "
                f"judge.model and the server's log (e.g. a prompt longer than its context); nothing written to {out_path}"
            )
        if transport:
            print(f"[{STAGE}] warning: {len(transport)} rollouts fell back to the rules judge after transport errors "
                  f"(not cached; a rerun asks again); first: {transport[0].error}", file=sys.stderr)
        records = []
        for r, k in zip(rollouts, keys):
            if k in fresh:
                src = fresh[k]
                rec = JudgeRecord.from_row(src.to_row())
                if rec.rollout_id != r["rollout_id"]:  # a duplicate completion judged once in this run
                    rec.cached = True
            else:
                rec = JudgeRecord.from_row(cache.get(k))
                rec.cached = True
            rec.rollout_id, rec.sample_id = r["rollout_id"], r["sample_id"]
            records.append(rec)
        stats.update(calls=sum(rec.attempts for rec in fresh.values()), cache_hits=hits,
                     judged=len(fresh), cache_size=len(cache) if cache is not None else 0,
                     cache_parts_written=len(cache.parts_written) if cache is not None else 0)

    write_parquet(to_table(records), out_path)
    status = Counter(r.parse_status for r in records)
    elapsed = time.perf_counter() - t0
    stats.update(parse_status=dict(sorted(status.items())), seconds=round(elapsed, 3), judge_config_hash=chash,
                 answer=dict(sorted(Counter(r.answer_correctness or "n/a" for r in records).items())))
    print(
        f"[{STAGE}] {len(records)} rollouts judged by {cfg['backend']}"
        + (f" ({cfg.get('model')})" if cfg["backend"] == "llm" else "")
        + f": calls={stats['calls']} cache_hits={stats['cache_hits']} "
        + " ".join(f"{k}={v}" for k, v in stats["parse_status"].items())
        + f"; answers {stats['answer']}; {elapsed:.1f}s; judge_config_hash={chash}",
        flush=True,
    )
    return stats


# --------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Judge every rollout of one shard (rules judge or LLM judge) and write the judge table "
        "(JUDGE schema, one row per rollout). LLM replies are cached under --cache-dir by judge config hash."
    )
    parser.epilog = (
        'example: visd judge --params \'{"judge": {"backend": "llm", "base_url": "http://127.0.0.1:8000/v1"}}\' '
        "--rollouts results/rollouts/phase-0/shard-0.parquet --samples results/samples.parquet "
        "--cache-dir results/judge_cache --out results/judge/phase-0/shard-0.parquet"
    )
    parser.add_argument("--params", default=None,
                        help='config slice as JSON, {"version": ..., "judge": {...}}, or @file.json; '
                             "missing keys take the schema defaults")
    parser.add_argument("--rollouts", required=True, help="rollouts shard written by `visd rollout`")
    parser.add_argument("--samples", required=True, help="samples table written by `visd prepare-data`")
    parser.add_argument("--out", required=True, help="judge table to write, e.g. results/judge/phase-P/shard-K.parquet")
    parser.add_argument("--cache-dir", default=None,
                        help="judge cache root (default: no cache), e.g. results/judge_cache")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        params = vconfig.parse_params(args.params)
        run(args.rollouts, args.samples, args.out, params.get("judge"), args.cache_dir, progress=not args.no_progress)
    except (vconfig.ConfigError, JudgeError, ValueError, FileNotFoundError) as e:
        print(f"visd judge: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 — e.g. OpenAIError while resolving the model; message is redacted
        print(f"visd judge: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["JUDGE", "JudgeCache", "JudgeError", "config_hash", "configure_parser", "judge_section", "main",
           "rollout_key", "run"]
