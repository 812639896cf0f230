"""`visd plan`: what a config costs before it runs — jobs per rule, GPU-hours, cache sizes, wall time.

The same sizing model sizes the cluster jobs: ``workflow/rules/resources.smk`` asks
:func:`job_resources` for every rule's GPUs, nodes, threads, memory and runtime, so what ``visd plan``
prints is what ``snakemake --profile slurm`` will request.

How the numbers are made (every constant is an :class:`Assumptions` field; ``--assume key=value``
changes it; nothing here was measured on a GPU — see README "Sizing"):

- **Data.** Train prompts per phase = ``min(rollout.limit × shards, train samples)``; the train samples
  are counted from ``--samples results/samples.parquet`` when given, else from the annotation files
  (STGR: one sample per record; V-STaR: three chained samples per item), else from ``limit``, else the
  ``assumed_samples_per_source`` assumption (flagged in the output).
- **Tokens.** Prompt = vision tokens (frames × ``max_pixels / 28²``, halved in ``video`` mode by the
  temporal patch of 2) + text; completions average ``completion_fraction × max_new_tokens``.
  Rollouts per phase = prompts × G; teacher scoring reads prompt + hint + completion of every rollout.
- **Teacher cache.** bytes = completion tokens × (a + b·K), a line through the measured
  46 B/token at K = 16 and 152 B/token at K = 64 (``bench/cache.py``, README).
- **GPU time.** Decoding and prefill throughput per GPU scale as 7 B / model size; training costs
  6 · params · tokens FLOPs at ``train_mfu`` of ``gpu_peak_tflops``, plus a per-step overhead; every
  GPU job pays a start-up (loading weights, engine warm-up).
- **Wall time.** The critical path: import + frames, then per phase rollouts → reward → judge → teacher
  → train (shards of a stage run side by side, in waves when ``--gpus`` is smaller than a stage needs),
  then the last evaluation (earlier evaluations overlap the next phase).

Job counts follow the DAG of ``workflow/rules`` (``tests/unit/test_plan.py`` checks them against
``snakemake -n``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from visd import config as cfgmod

REPO_ROOT = cfgmod.REPO_ROOT
DEFAULT_CONFIGFILE = REPO_ROOT / "config" / "config.yaml"  # the Snakefile's `configfile:`


# ============================================================================ assumptions
@dataclass(frozen=True)
class Assumptions:
    """Constants of the sizing model. None of them was measured on a GPU here; change them with
    ``visd plan --assume name=value`` once your cluster has measured its own."""

    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    # decoding, tokens/s per GPU for a 7 B model (vLLM, batched sampling; hf is far slower)
    decode_tok_s_7b: dict = field(default_factory=lambda: {"vllm": 2500.0, "hf": 250.0})
    # prefill / teacher-forced scoring, tokens/s per GPU for a 7 B model
    prefill_tok_s_7b: dict = field(default_factory=lambda: {"vllm": 20000.0, "hf": 10000.0})
    gpu_peak_tflops: float = 989.0  # H100 SXM, bf16 dense
    train_mfu: float = 0.15  # achieved fraction of peak in the trainer (FSDP2 full sharding, small micro-batches)
    train_step_overhead_s: float = 3.0  # optimizer step, parameter gathers, EMA update per step
    startup_s: float = 60.0  # per GPU job: process start, imports
    startup_s_per_b: float = 15.0  # + per billion parameters: loading weights, engine warm-up
    completion_fraction: float = 0.5  # mean completion length / max_new_tokens
    text_tokens: int = 150  # system prompt + question + frame labels
    hint_tokens: int = 120  # privileged hint in the teacher view
    judge_latency_s: float = 3.0  # one LLM-judge call (prompt ≈ 1.5k tokens, answer ≈ 200)
    rules_judge_per_s: float = 5000.0  # measured: bench/judge.py
    frame_extract_s: float = 0.5  # CPU seconds per sample (decord decode + resize + JPEG)
    frame_bytes: int = 30 * 1024  # stored JPEG bytes per frame at ~100k pixels (README benchmark)
    synth_samples_per_video: float = 8.6  # measured on the embedded default (207 samples / 24 videos)
    assumed_samples_per_source: int = 10000  # when neither --samples, a file nor a limit says
    gpu_mem_gb: int = 80  # per GPU (H100 / A100 80 GB)
    runtime_safety: float = 2.0  # Slurm time limit = safety × estimate (× attempt on retries)
    min_runtime_min: int = 30


def cache_bytes_per_token(k: int) -> float:
    """Teacher-cache bytes per completion token at top-K (measured 46 at K = 16, 152.3 at K = 64)."""
    slope = (152.3 - 46.0) / (64 - 16)
    return 46.0 + slope * (k - 16)


# ============================================================================ config
def deep_update(base: dict, new: dict) -> dict:
    """Snakemake's config merge: nested dicts merge, everything else is replaced."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    d = cfg
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def load_config(configfiles=(), params: str | None = None, overrides=(), base: bool = True) -> dict:
    """The config a Snakemake run would see: config/config.yaml (the Snakefile's ``configfile:``), then
    every ``--configfile`` in order, then ``--config KEY=VALUE`` overrides; validated, defaults filled."""
    cfg: dict = {}
    if base and DEFAULT_CONFIGFILE.exists():
        deep_update(cfg, yaml.safe_load(DEFAULT_CONFIGFILE.read_text()) or {})
    for f in configfiles:
        deep_update(cfg, yaml.safe_load(Path(f).read_text()) or {})
    if params:
        deep_update(cfg, cfgmod.parse_params(params))
    for item in overrides:
        key, _, value = item.partition("=")
        set_dotted(cfg, key.strip(), yaml.safe_load(value))
    return cfgmod.validate(cfg)


# ============================================================================ the DAG (mirrors workflow/rules)
def lambda_positive(cfg: dict, phase: int) -> bool:
    """Is λ > 0 at the first optimizer step of the phase? (common.smk: lambda_positive)"""
    t = cfg["train"]
    steps = cfg["curriculum"]["steps_per_phase"]
    if t["lam0"] <= 0:
        return False
    return True if steps is None else phase * steps + 1 <= t["anneal_steps"]


def needs_teacher(cfg: dict, phase: int) -> bool:
    recipe = cfg["train"]["recipe"]
    if recipe == "visd":
        return lambda_positive(cfg, phase)
    if recipe == "opsd":
        return cfg["train"]["opsd"]["teacher"] != "live"
    return False


def needs_judge(cfg: dict, phase: int) -> bool:
    return needs_teacher(cfg, phase) and "feedback" in cfg["teacher"]["hint"]


def job_counts(cfg: dict) -> dict[str, int]:
    """Jobs per rule of the default target (`snakemake -n` Job stats, without `all`)."""
    s, phases = cfg["data"]["shards"], range(cfg["curriculum"]["phases"])
    jobs = {
        "synth": int(cfg["data"]["synth"]["enabled"]),
        "prepare_data": 1,
        "extract_frames": s,
        "build_tiny": int(cfg["model"]["init"] == "tiny"),
        "sft": int(cfg["sft"]["enabled"]),
        "rollout": s * len(phases),
        "reward": s * len(phases),
        "judge": s * sum(needs_judge(cfg, p) for p in phases),
        "teacher_logits": s * sum(needs_teacher(cfg, p) for p in phases),
        "train": len(phases),
    }
    ev = cfg["evaluate"]
    jobs["evaluate"] = ((int(ev["start"]) + len(phases)) * len(ev["benchmarks"])) if ev["enabled"] else 0
    jobs["kl_gap"] = (1 + len(phases)) if cfg["diagnostics"]["kl_gap"] else 0
    rmsd = cfg.get("rmsd") or {}
    if rmsd.get("enabled"):  # workflow/rules/rmsd.smk: its reward replaces `reward`
        own_teacher = int(rmsd["teacher"]["model"] == "workflow")
        jobs.update(rmsd_teacher_init=own_teacher, rmsd_teacher_sft=own_teacher, rmsd_teacher_pool=s, rmsd_pool=s,
                    rmsd_sft=1, rmsd_discriminator_warmup=1, rmsd_discriminator=len(phases),
                    rmsd_reward=jobs.pop("reward"))
    jobs["report"] = 1
    return {k: v for k, v in jobs.items() if v}


# ============================================================================ model and data size
def on_gpu(cfg: dict) -> bool:
    """Real checkpoints run on GPUs; the embedded tiny model runs on CPU (also under Slurm)."""
    return cfg["model"]["init"] != "tiny"


@lru_cache(maxsize=32)
def _params_from_folder(folder: str) -> float | None:
    p = Path(folder) / "config.json"
    if not p.exists():
        return None
    c = json.loads(p.read_text())
    t = c.get("text_config") or c
    h, i, n = t.get("hidden_size"), t.get("intermediate_size"), t.get("num_hidden_layers")
    v = t.get("vocab_size") or c.get("vocab_size")
    if not (h and i and n and v):
        return None
    kv = t.get("num_key_value_heads") or t.get("num_attention_heads") or 1
    heads = t.get("num_attention_heads") or 1
    attn = h * h * 2 + 2 * h * (h // heads) * kv
    total = n * (attn + 3 * h * i) + v * h * (1 if c.get("tie_word_embeddings") else 2)
    vc = c.get("vision_config") or {}
    vh, vd = vc.get("hidden_size"), vc.get("depth")
    if vh and vd:
        total += vd * (4 * vh * vh + 3 * vh * (vc.get("intermediate_size") or 4 * vh))
    return total / 1e9


def model_params_b(cfg: dict) -> tuple[float, str]:
    """Billions of parameters of the policy and where the number came from."""
    init = cfg["model"]["init"]
    if init == "tiny":
        t = cfg["model"]["tiny"]
        h, i, n, v = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["vocab_size"]
        return (n * (4 * h * h + 3 * h * i) + 2 * v * h) / 1e9, "model.tiny"
    from_folder = _params_from_folder(init)
    if from_folder:
        return from_folder, f"{init}/config.json"
    m = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", Path(init).name)
    if m:
        return float(m.group(1)), f"the name {Path(init).name!r} (folder not on disk)"
    return 7.0, "assumed (folder not on disk, no size in its name)"


@lru_cache(maxsize=64)
def _count_records(path: str, mtime: float) -> int:
    text = Path(path).read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:  # JSON lines
        return sum(1 for line in text.splitlines() if line.strip())
    if isinstance(obj, dict):
        for key in ("data", "items", "annotations"):
            if isinstance(obj.get(key), list):
                return len(obj[key])
        return len(obj)
    return len(obj)


def source_samples(src: dict, assume: Assumptions, records: dict | None = None) -> tuple[int, str]:
    """Samples one data source contributes, and how we know."""
    per_record = 3 if src["format"] == "vstar" else 1  # V-STaR: what / when / where per item
    name = src.get("name") or src["format"]
    if records and name in records:
        n = records[name] * per_record
        return (min(n, src["limit"] * per_record) if src.get("limit") else n), "--records"
    if src.get("limit"):
        return src["limit"] * per_record, "limit"
    p = Path(src["annotations"])
    if p.exists():
        return _count_records(str(p), p.stat().st_mtime) * per_record, "counted"
    return assume.assumed_samples_per_source * per_record, "assumed (no file: pass --records NAME=N)"


@dataclass
class Data:
    train: int  # samples in split train (rollout prompts before rollout.limit)
    eval: dict[str, int]  # samples per benchmark
    total: int  # samples imported (frames are extracted for all of them)
    how: list[str]


def estimate_data(cfg: dict, assume: Assumptions, samples: str | None = None, records: dict | None = None) -> Data:
    how: list[str] = []
    by_split: dict[tuple[str, str], int] = {}
    if samples:
        import pyarrow.parquet as pq

        rows = pq.read_table(samples, columns=["split", "source"]).to_pylist()
        for r in rows:
            by_split[(r["split"], r["source"])] = by_split.get((r["split"], r["source"]), 0) + 1
        how.append(f"counted in {samples}")
    else:
        syn = cfg["data"]["synth"]
        if syn["enabled"]:
            n = syn["n_videos"] * assume.synth_samples_per_video
            by_split[("eval", "synth")] = round(n * cfg["data"]["eval_fraction"])
            by_split[("train", "synth")] = round(n) - by_split[("eval", "synth")]
            how.append(f"synth: {syn['n_videos']} videos × {assume.synth_samples_per_video} samples")
        for src in cfg["data"]["sources"]:
            n, why = source_samples(src, assume, records)
            name = src.get("name") or src["format"]
            key = (src.get("split", "train"), name)
            by_split[key] = by_split.get(key, 0) + n
            how.append(f"{name} ({src['format']}, {key[0]}): {n} samples, {why}")
    splits = set(cfg["rollout"]["splits"])
    train = sum(n for (split, _), n in by_split.items() if split in splits)
    ev = {}
    for b in cfg["evaluate"]["benchmarks"]:
        n = sum(c for (split, src), c in by_split.items()
                if split == b.get("split", "eval") and (not b.get("sources") or src in b["sources"]))
        if b.get("limit"):
            n = min(n, b["limit"] * 3)  # chains count once: at most 3 samples per item
        ev[b["name"]] = n
    return Data(train=train, eval=ev, total=sum(by_split.values()), how=how)


# ============================================================================ the plan
def prompt_tokens(cfg: dict, assume: Assumptions) -> int:
    fr = cfg["frames"]
    per_frame = fr["max_pixels"] // (fr["grid"] ** 2)
    n_frames = fr["max_frames"]
    vision = n_frames * per_frame // (2 if cfg["prompt"]["mode"] == "video" else 1)
    return vision + assume.text_tokens


def engine_gpus(cfg: dict, section: str) -> int:
    """GPUs of one job of an engine stage: the vLLM tensor (× pipeline) parallel size, else 1."""
    if not on_gpu(cfg):
        return 0
    sec = cfg[section]
    if sec.get("backend") == "vllm":
        args = sec.get("engine_args") or {}
        return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))
    return 1


def train_layout(cfg: dict, assume: Assumptions) -> tuple[int, int]:
    """(nodes, GPUs per node) of a training job. One prompt group (G rollouts) per GPU and optimizer
    step, as in the released run (16 prompts × 4 rollouts on 16 GPUs); nodes of ``gpus_per_node``."""
    if not on_gpu(cfg):
        return 1, 0
    world = max(1, cfg["train"]["prompts_per_step"])
    nodes = math.ceil(world / assume.gpus_per_node)
    return nodes, math.ceil(world / nodes)


@dataclass
class StageCost:
    jobs: int
    gpus_per_job: int
    nodes: int
    seconds_per_job: float  # estimated wall seconds of one job
    gpu_hours: float


@dataclass
class Plan:
    config: dict
    model_b: float
    model_source: str
    data: Data
    prompts_per_phase: int
    steps_per_phase: int
    rollouts_per_phase: int
    completion_tokens_per_phase: int
    prompt_tokens: int
    teacher_phases: int
    judge_phases: int
    stages: dict[str, StageCost]
    teacher_cache_bytes: float
    frames_bytes: float
    judge_calls: int
    wall_seconds: float
    gpus: int
    assumptions: Assumptions

    @property
    def jobs(self) -> dict[str, int]:
        return {k: v.jobs for k, v in self.stages.items() if v.jobs}

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages.values())

    def to_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("config", "assumptions")}
        d.update(jobs=self.jobs, gpu_hours=self.gpu_hours, total_jobs=sum(self.jobs.values()) + 1)
        return d


def make_plan(cfg: dict, assume: Assumptions | None = None, samples: str | None = None,
              gpus: int | None = None, records: dict | None = None) -> Plan:
    a = assume or Assumptions()
    p_b, p_src = model_params_b(cfg)
    data = estimate_data(cfg, a, samples, records)
    shards, phases = cfg["data"]["shards"], cfg["curriculum"]["phases"]
    g, t, ro = cfg["rollout"]["group_size"], cfg["train"], cfg["rollout"]
    per_shard = math.ceil(data.train / shards)
    if ro["limit"]:
        per_shard = min(per_shard, ro["limit"])
    prompts = min(data.train, per_shard * shards)
    steps = cfg["curriculum"]["steps_per_phase"] or math.ceil(prompts / t["prompts_per_step"]) * t["epochs"]
    rollouts = prompts * g
    completion = round(rollouts * ro["max_new_tokens"] * a.completion_fraction)
    ptok = prompt_tokens(cfg, a)
    counts = job_counts(cfg)
    teacher_phases = counts.get("teacher_logits", 0) // shards
    judge_phases = counts.get("judge", 0) // shards
    scale = 7.0 / max(p_b, 0.1)
    gpu = on_gpu(cfg)
    startup = a.startup_s + a.startup_s_per_b * p_b

    def decode(section):
        return a.decode_tok_s_7b[cfg[section].get("backend", "hf")] * scale

    def prefill(section):
        return a.prefill_tok_s_7b[cfg[section].get("backend", "hf")] * scale

    stages: dict[str, StageCost] = {}

    def add(rule, seconds, gpus_per_job=0, nodes=1):
        n = counts.get(rule, 0)
        stages[rule] = StageCost(n, gpus_per_job, nodes, seconds, n * seconds * gpus_per_job * nodes / 3600)

    # CPU stages
    add("synth", 60.0)
    add("prepare_data", 60.0 + 0.001 * data.total)
    add("extract_frames", math.ceil(data.total / shards) * a.frame_extract_s)
    add("build_tiny", 30.0)
    # rollouts of one shard: prefill once per prompt, decode G completions, re-score for the gap
    r_gpus = engine_gpus(cfg, "rollout")
    shard_rollouts = per_shard * g
    shard_completion = shard_rollouts * ro["max_new_tokens"] * a.completion_fraction
    r_sec = (shard_completion / decode("rollout") + per_shard * ptok / prefill("rollout")) / max(1, r_gpus)
    if ro["record_gap"]:
        # the engine-vs-trainer gap: one transformers forward of every rollout
        r_sec += shard_rollouts * (ptok + ro["max_new_tokens"] * a.completion_fraction) / (a.prefill_tok_s_7b["hf"] * scale)
    add("rollout", (startup if gpu else 0) + r_sec, r_gpus)
    add("reward", 30.0 + shard_rollouts * 0.001)
    j = cfg["judge"]
    if j["backend"] == "llm":
        j_sec = shard_rollouts * a.judge_latency_s / j["concurrency"]
        j_gpus = 1 if (gpu and j["engine"] in ("hf", "vllm")) else 0
    else:
        j_sec, j_gpus = shard_rollouts / a.rules_judge_per_s, 0
    add("judge", 30.0 + j_sec, j_gpus)
    t_gpus = engine_gpus(cfg, "teacher")
    t_sec = shard_rollouts * (ptok + a.hint_tokens + ro["max_new_tokens"] * a.completion_fraction) / prefill("teacher")
    add("teacher_logits", (startup if gpu else 0) + t_sec / max(1, t_gpus), t_gpus)
    # training: 6·P·tokens per step over the world, plus per-step overhead
    nodes, per_node = train_layout(cfg, a)
    world = max(1, nodes * per_node)
    step_tokens = t["prompts_per_step"] * g * (ptok + ro["max_new_tokens"] * a.completion_fraction)
    flops = 6 * p_b * 1e9 * step_tokens * (1.5 if t["kl_coef"] > 0 else 1.0)
    step_s = flops / (world * a.gpu_peak_tflops * 1e12 * a.train_mfu) + a.train_step_overhead_s
    add("train", (startup if gpu else 0) + steps * step_s, per_node, nodes)
    s = cfg["sft"]
    sft_tokens = s["steps"] * s["batch_size"] * (ptok + ro["max_new_tokens"] * a.completion_fraction)
    add("sft", (startup if gpu else 0) + 6 * p_b * 1e9 * sft_tokens / (a.gpu_peak_tflops * 1e12 * a.train_mfu),
        1 if gpu else 0)
    # evaluation: greedy, about 5/3 generations per V-STaR sample (two chain variants per item)
    e = cfg["evaluate"]
    e_gpus = engine_gpus(cfg, "evaluate")
    n_eval = max(data.eval.values(), default=0)
    e_sec = n_eval * 5 / 3 * e["max_new_tokens"] * a.completion_fraction / (
        a.decode_tok_s_7b[e["backend"]] * scale) + n_eval * ptok / (a.prefill_tok_s_7b[e["backend"]] * scale)
    add("evaluate", (startup if gpu else 0) + e_sec / max(1, e_gpus), e_gpus)
    kl_n = cfg["diagnostics"]["limit"]
    # KL gap: a teacher-view and a student-view forward of each held-out reference
    add("kl_gap", (startup if gpu else 0) + 2 * kl_n * (ptok + a.hint_tokens) / (a.prefill_tok_s_7b["hf"] * scale),
        1 if gpu else 0)

    add("report", 60.0)
    for rule in counts:  # rules without a time model here (R-MSD): an hour, one GPU on real models
        if rule not in stages:
            add(rule, 3600.0, 1 if (gpu and rule in GPU_RULES_UNSIZED) else 0)

    # wall time on `gpus` GPUs (default: enough for the widest stage)
    widest = max([shards * max(1, r_gpus), shards * max(1, t_gpus), world] if gpu else [1])
    n_gpus = gpus or widest

    def waves(per_job_gpus):
        return math.ceil(shards / max(1, n_gpus // max(1, per_job_gpus))) if per_job_gpus else 1

    sc = stages
    wall = sc["prepare_data"].seconds_per_job + sc["extract_frames"].seconds_per_job
    wall += sc["synth"].seconds_per_job if counts.get("synth") else 0
    wall += sc["build_tiny"].seconds_per_job if counts.get("build_tiny") else 0
    wall += sc["sft"].seconds_per_job if counts.get("sft") else 0
    for ph in range(phases):
        wall += waves(r_gpus) * sc["rollout"].seconds_per_job + sc["reward"].seconds_per_job
        if needs_judge(cfg, ph):
            wall += sc["judge"].seconds_per_job
        if needs_teacher(cfg, ph):
            wall += waves(t_gpus) * sc["teacher_logits"].seconds_per_job
        wall += sc["train"].seconds_per_job
    if counts.get("evaluate"):
        wall += sc["evaluate"].seconds_per_job

    return Plan(
        config=cfg, model_b=p_b, model_source=p_src, data=data, prompts_per_phase=prompts,
        steps_per_phase=steps, rollouts_per_phase=rollouts, completion_tokens_per_phase=completion,
        prompt_tokens=ptok, teacher_phases=teacher_phases, judge_phases=judge_phases, stages=stages,
        teacher_cache_bytes=completion * teacher_phases * cache_bytes_per_token(cfg["teacher"]["top_k"]),
        frames_bytes=data.total * cfg["frames"]["max_frames"] * a.frame_bytes,
        judge_calls=rollouts * judge_phases if j["backend"] == "llm" else 0,
        wall_seconds=wall, gpus=n_gpus, assumptions=a,
    )


# ============================================================================ job resources (resources.smk)
# Rules the plan has no time model for; on real models they get one GPU and a 2-hour runtime.
GPU_RULES_UNSIZED = ("study_run", "rmsd_teacher_sft", "rmsd_teacher_pool", "rmsd_sft", "rmsd_discriminator_warmup",
                     "rmsd_discriminator", "rmsd_reward")
CPU_MEM_MB = {"extract_frames": 4000, "build_tiny": 4000, "sft": 4000, "train": 4000, "rollout": 4000,
              "teacher_logits": 4000, "evaluate": 4000, "kl_gap": 4000, "study_run": 4000,
              **{rule: 4000 for rule in GPU_RULES_UNSIZED}}


def job_resources(cfg: dict, rule: str, assume: Assumptions | None = None) -> dict:
    """Slurm-facing resources of one job of ``rule``: gpu, nodes, threads, mem_mb, runtime (minutes).

    The tiny model runs every stage on CPU: no GPUs, one thread, small memory, an hour. Real models:
    GPUs from the engines (vLLM tensor parallel size), training one GPU per prompt group of a step
    (:func:`train_layout`), threads ``cpus_per_gpu`` per GPU, host memory for loading the weights, and a
    runtime of ``runtime_safety`` × the :func:`make_plan` estimate of one job.
    """
    a = assume or Assumptions()
    if not on_gpu(cfg):
        return {"gpu": 0, "nodes": 1, "threads": 1, "mem_mb": CPU_MEM_MB.get(rule, 2000), "runtime": 60}
    p = make_plan(cfg, a)
    st = p.stages.get(rule)
    gpus = st.gpus_per_job if st else (1 if rule in GPU_RULES_UNSIZED else 0)
    nodes = st.nodes if st else 1
    p_b = p.model_b
    if gpus:
        # weights once in host memory per process (bf16) + frames and buffers
        mem_gb = gpus * max(32, math.ceil(2 * p_b + 16))
        threads = gpus * a.cpus_per_gpu
    else:
        mem_gb = 8 if rule in ("extract_frames", "prepare_data", "judge") else 4
        threads = 4 if rule == "extract_frames" else 1
    seconds = st.seconds_per_job if st else 3600
    runtime = max(a.min_runtime_min, math.ceil(a.runtime_safety * seconds / 60))
    return {"gpu": gpus, "nodes": nodes, "threads": threads, "mem_mb": mem_gb * 1024, "runtime": runtime}


# ============================================================================ printing
def _h(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def format_plan(p: Plan, title: str = "") -> str:
    cfg = p.config
    t, ro = cfg["train"], cfg["rollout"]
    gpu = on_gpu(cfg)
    lines = [f"visd plan{': ' + title if title else ''}"]
    lines.append(f"  model      {cfg['model']['init']} — {p.model_b:.3g} B parameters (from {p.model_source}); "
                 + ("engine stages on GPUs" if gpu else "tiny model: every stage runs on CPU"))
    lines.append("  data       " + "; ".join(p.data.how))
    lines.append(f"  per phase  {p.prompts_per_phase:,} prompts × G={ro['group_size']} = {p.rollouts_per_phase:,} rollouts, "
                 f"{p.steps_per_phase:,} optimizer steps of {t['prompts_per_step']} prompts; prompt ≤ "
                 f"{p.prompt_tokens:,} tokens, completions ≈ {p.completion_tokens_per_phase:,} tokens")
    lines.append(f"  phases     {cfg['curriculum']['phases']} (judge in {p.judge_phases}, teacher in {p.teacher_phases}); "
                 f"shards {cfg['data']['shards']}; K={cfg['teacher']['top_k']}")
    lines.append("")
    if gpu:
        lines.append(f"  {'rule':<16}{'jobs':>6}{'GPUs/job':>10}{'nodes':>7}{'time/job':>11}{'GPU-h':>10}")
        for rule, st in p.stages.items():
            if st.jobs:
                lines.append(f"  {rule:<16}{st.jobs:>6}{st.gpus_per_job:>10}{st.nodes:>7}{_h(st.seconds_per_job):>11}"
                             f"{st.gpu_hours:>10.1f}")
        lines.append(f"  {'total':<16}{sum(p.jobs.values()) + 1:>6}{'':>28}{p.gpu_hours:>10.1f}   (with rule all)")
    else:
        lines.append(f"  {'rule':<16}{'jobs':>6}")
        lines += [f"  {rule:<16}{n:>6}" for rule, n in p.jobs.items()]
        lines.append(f"  {'total':<16}{sum(p.jobs.values()) + 1:>6}   (with rule all)")
    lines.append("")
    k = cfg["teacher"]["top_k"]
    lines.append(f"  teacher cache   {_bytes(p.teacher_cache_bytes)} = {p.completion_tokens_per_phase:,} tokens × "
                 f"{p.teacher_phases} phases × {cache_bytes_per_token(k):.0f} B/token (K={k})")
    lines.append(f"  frames          ≤ {_bytes(p.frames_bytes)} ({p.data.total:,} samples × ≤{cfg['frames']['max_frames']} frames)")
    if p.judge_calls:
        lines.append(f"  judge calls     {p.judge_calls:,} to {cfg['judge']['base_url'] or cfg['judge']['engine']}")
    if gpu:
        lines.append(f"  wall time       ≈ {_h(p.wall_seconds)} on {p.gpus} GPUs (critical path; queueing not included)")
        train = p.stages["train"]
        if p.gpus < train.nodes * train.gpus_per_job:
            lines.append(f"  note            a training job needs {train.nodes * train.gpus_per_job} GPUs at once "
                         f"({train.nodes} nodes × {train.gpus_per_job})")
    else:
        lines.append("  wall time       not modelled on CPU (benchmarks/<rule>/*.tsv of a run has the measured times)")
    return "\n".join(lines)


def _vary_rows(cfg: dict, varies: list[str], a: Assumptions, **kw) -> list[tuple[str, Plan]]:
    rows = [("baseline", make_plan(cfg, a, **kw))]
    for item in varies:
        key, _, values = item.partition("=")
        for v in values.split(","):
            c = copy.deepcopy(cfg)
            set_dotted(c, key, yaml.safe_load(v))
            rows.append((f"{key}={v}", make_plan(cfgmod.validate(c), a, **kw)))
    return rows


def format_vary(rows: list[tuple[str, Plan]]) -> str:
    out = [f"  {'variant':<32}{'jobs':>7}{'GPU-h':>10}{'cache':>11}{'wall':>9}"]
    for name, p in rows:
        wall = _h(p.wall_seconds) if on_gpu(p.config) else "—"
        out.append(f"  {name:<32}{sum(p.jobs.values()) + 1:>7}{p.gpu_hours:>10.1f}"
                   f"{_bytes(p.teacher_cache_bytes):>11}{wall:>9}")
    return "\n".join(out)


# ============================================================================ CLI
def parse_assume(items) -> Assumptions:
    a = Assumptions()
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(Assumptions)}
    for item in items or []:
        key, _, value = item.partition("=")
        top, _, sub = key.strip().partition(".")
        if top not in names:
            raise SystemExit(f"visd plan: unknown assumption {top!r} (known: {', '.join(sorted(names))})")
        if sub:  # decode_tok_s_7b.vllm=3000
            changes[top] = {**changes.get(top, getattr(a, top)), sub: float(value)}
        else:
            changes[top] = type(getattr(a, top))(yaml.safe_load(value))
    return dataclasses.replace(a, **changes)


def parse_records(items) -> dict[str, int]:
    out = {}
    for item in items or []:
        name, _, n = item.partition("=")
        if not n.strip().isdigit():
            raise SystemExit(f"visd plan: --records wants NAME=COUNT (a source name and its record count), got {item!r}")
        out[name.strip()] = int(n)
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", nargs="+", default=[], metavar="YAML",
                   help="config files merged on top of config/config.yaml, as `snakemake --configfile`")
    p.add_argument("--params", help="a full config as JSON (or @file.json), merged after the config files")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides with dotted keys, e.g. rollout.group_size=8 teacher.top_k=64")
    p.add_argument("--no-base", action="store_true", help="do not start from config/config.yaml")
    p.add_argument("--samples", help="count samples in this samples.parquet instead of estimating them")
    p.add_argument("--records", nargs="+", default=[], metavar="NAME=N",
                   help="records in a data source whose annotation file is not here, e.g. stgr=30000 vstar=2000")
    p.add_argument("--gpus", type=int, help="GPUs you can use at once (default: as many as the widest stage)")
    p.add_argument("--assume", nargs="+", default=[], metavar="NAME=VALUE",
                   help="change a sizing assumption (visd/plan.py, Assumptions), e.g. "
                        "decode_tok_s_7b.vllm=3000 gpus_per_node=4 completion_fraction=0.7")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="also print one row per value of KEY (repeatable), e.g. rollout.group_size=4,8")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.configfile, args.params, args.config, base=not args.no_base)
    except cfgmod.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    a = parse_assume(args.assume)
    kw = {"samples": args.samples, "gpus": args.gpus, "records": parse_records(args.records)}
    p = make_plan(cfg, a, **kw)
    if args.json:
        out = p.to_dict()
        if args.vary:
            out["vary"] = {name: q.to_dict() for name, q in _vary_rows(cfg, args.vary, a, **kw)}
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(format_plan(p, " ".join(args.configfile) or "config/config.yaml"))
    if args.vary:
        print("\n  scaling (one key changed at a time):")
        print(format_vary(_vary_rows(cfg, args.vary, a, **kw)))
    print("\n  sizing constants: visd/plan.py (Assumptions), `--assume`; none of them was measured on a GPU here.")
    return 0
