# Path helpers, config validation, canonical per-stage params. No science here: rules call `visd <verb>`.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from visd.config import ConfigError, validate as validate_config
from visd.io import canonical_json

try:
    config.update(validate_config(config))
except ConfigError as e:
    raise WorkflowError(str(e))

RESULTS = config["results"]
N_SHARDS = config["data"]["shards"]
SHARDS = list(range(N_SHARDS))

# Bump a stage's version when its code changes what it writes: the stage's params change, so
# Snakemake reruns it and everything downstream (and nothing upstream).
STAGE_VERSIONS = {
    "synth": "1",
    "prepare_data": "1",
    "extract_frames": "1",
    "build_tiny": "1",
    "rollout": "2",
    "reward": "1",
    "judge": "1",
    "sft": "1",
    "teacher_logits": "1",
    "train": "1",
    "evaluate": "1",
    "kl_gap": "1",
}


wildcard_constraints:
    shard=r"\d+",
    phase=r"\d+",
    tag=r"start|phase-\d+",
    bench=r"[A-Za-z0-9_.-]+",


def res(*parts):
    """A path under the results folder."""
    return str(Path(RESULTS, *map(str, parts)))


def config_slice(*keys):
    """The nested sub-dict of `config` holding exactly the dotted `keys` ("data.synth", "seed")."""
    out = {}
    for key in keys:
        src, dst = config, out
        parts = key.split(".")
        for p in parts[:-1]:
            src = src[p]
            dst = dst.setdefault(p, {})
        dst[parts[-1]] = src[parts[-1]]
    return out


def stage_params(stage, *keys):
    """Canonical JSON of a stage's config slice plus its version: the value Snakemake compares."""
    return canonical_json({"version": f"{stage}/{STAGE_VERSIONS[stage]}", **config_slice(*keys)})


def source_annotations():
    """Annotation files of the external sources (inputs of prepare_data, so edits rerun import)."""
    return [s["annotations"] for s in config["data"]["sources"]]


def synth_annotations():
    return [res("synth", "annotations.jsonl")] if config["data"]["synth"]["enabled"] else []


def frame_shards():
    return expand(res("frames", "shard-{shard}.parquet"), shard=SHARDS)


def init_model():
    """The initial policy: a folder on disk, or the tiny model built offline."""
    init = config["model"]["init"]
    return res("models", "init") if init == "tiny" else init


PHASES = list(range(config["curriculum"]["phases"]))
RECIPE = config["train"]["recipe"]


def start_policy():
    """The policy phase 0 starts from: R-MSD's Stage-1 model, else the SFT warm-up when enabled, else the initial model."""
    if config["rmsd"]["enabled"]:
        return res("models", "rmsd-sft")
    return res("models", "sft") if config["sft"]["enabled"] else init_model()


def policy_for_phase(phase):
    """Rollouts of phase P use the policy that ended phase P-1; phase 0 uses the start policy."""
    p = int(phase)
    return start_policy() if p == 0 else res("checkpoints", f"phase-{p - 1}", "policy")


def teacher_for_phase(phase):
    """The EMA teacher of phase P: the one saved by phase P-1 (a copy of the start policy at phase 0)."""
    p = int(phase)
    if p == 0 or (RECIPE == "opsd" and config["train"]["opsd"]["teacher"] == "frozen"):
        return start_policy()
    return res("checkpoints", f"phase-{p - 1}", "teacher")


def lambda_positive(phase):
    """Is λ > 0 at the first optimizer step of the phase? Unknown step counts keep the teacher on."""
    lam0, t_a = config["train"]["lam0"], config["train"]["anneal_steps"]
    steps = config["curriculum"]["steps_per_phase"]
    if lam0 <= 0:
        return False
    if steps is None:
        return True
    return int(phase) * steps + 1 <= t_a


def needs_teacher(phase):
    """VISD needs cached teacher logits while λ > 0; OPSD always (unless its teacher runs live)."""
    if RECIPE == "visd":
        return lambda_positive(phase)
    if RECIPE == "opsd":
        return config["train"]["opsd"]["teacher"] != "live"
    return False


def needs_judge(phase):
    return needs_teacher(phase) and "feedback" in config["teacher"]["hint"]


def phase_tables(table, phase):
    return expand(res(table, f"phase-{phase}", "shard-{shard}.parquet"), shard=SHARDS)


def reference_model():
    """The frozen reference of the KL term for `train`: the start policy (recipes with train.kl_coef > 0).
    None under R-MSD: rmsd_reward caches the Stage-1 model's log-probs in the rewards table instead."""
    return start_policy() if config["train"]["kl_coef"] > 0 and not config["rmsd"]["enabled"] else []


def rmsd_reference():
    """The KL reference whose log-probs rmsd_reward caches: the Stage-1 model (train.kl_coef > 0)."""
    return res("models", "rmsd-sft") if config["train"]["kl_coef"] > 0 else []


def accelerate_args(wildcards, threads, resources):
    """`accelerate launch` flags from the job's resources (workflow/rules/resources.smk).

    - no GPUs (the tiny model): one CPU process;
    - one node, `gpu` = N: `--num_processes N`, DDP or the sharding of `accelerate_config`;
    - `nodes` = M > 1 with `gres` = gpu:N per node: this launch only starts `srun`, which runs one
      `accelerate launch --num_processes M·N --num_machines M` per node, the machine rank from
      SLURM_NODEID, the main process on the first host of SLURM_JOB_NODELIST (`scontrol show
      hostnames`). Those variables exist only inside srun's tasks, so `bash -c` expands them there; the
      training command's own arguments follow as "$@".
    """
    import shlex

    conf = getattr(resources, "accelerate_config", "")
    dist = f"--config_file {shlex.quote(conf)}" if conf else "--multi_gpu"
    nodes = int(getattr(resources, "nodes", 1) or 1)
    if nodes > 1:
        per_node = int(str(resources.gres).rsplit(":", 1)[-1])
        cpus = getattr(resources, "cpus_per_task", threads)
        per_node_launch = (
            "unset ${!ACCELERATE_@}; "  # settings of the outer launch are not the inner one's
            'main=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$SLURM_STEP_NODELIST}" | head -n1); '
            f"exec accelerate launch {dist} --num_processes {nodes * per_node} --num_machines {nodes} "
            '--machine_rank "$SLURM_NODEID" --main_process_ip "$main" '
            '--main_process_port $((29500 + SLURM_JOB_ID % 1000)) --rdzv_backend static --same_network "$@"'
        )
        return (
            "--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no --no_python "
            f"srun --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} --gres=gpu:{per_node} "
            f"--kill-on-bad-exit=1 bash -c {shlex.quote(per_node_launch)} visd-train"
        )
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f"{dist} --num_processes {gpus} --num_machines 1"
    if gpus == 1:
        return f"{dist if conf else ''} --num_processes 1 --num_machines 1".lstrip()
    return "--cpu --num_processes 1 --num_machines 1"


EVAL_TAGS = (["start"] if config["evaluate"]["start"] else []) + [f"phase-{p}" for p in PHASES]
BENCHMARKS = [b["name"] for b in config["evaluate"]["benchmarks"]]


def tag_phase(tag):
    """`start` → start (phase -1 in the tables); `phase-P` → P."""
    return "start" if tag == "start" else tag.removeprefix("phase-")


def policy_for_tag(tag):
    """The checkpoint an eval tag names: the start policy, or the policy that ended phase P."""
    return start_policy() if tag == "start" else res("checkpoints", tag, "policy")


def eval_targets():
    if not config["evaluate"]["enabled"]:
        return []
    return expand(res("eval", "{tag}", "{bench}.json"), tag=EVAL_TAGS, bench=BENCHMARKS)


def kl_gap_targets():
    if not config["diagnostics"]["kl_gap"]:
        return []
    return [res("diagnostics", "kl_gap", f"{tag}.json") for tag in ["start"] + [f"phase-{p}" for p in PHASES]]


def all_targets():
    targets = [res("samples.parquet"), *frame_shards()]
    if config["model"]["init"] == "tiny":
        targets.append(res("models", "init"))
    for phase in PHASES:
        targets += phase_tables("rollouts", phase) + phase_tables("rewards", phase)
        if needs_judge(phase):
            targets += phase_tables("judge", phase)
        if needs_teacher(phase):
            targets += phase_tables("teacher", phase)
        targets.append(res("checkpoints", f"phase-{phase}", "policy"))
    return targets + eval_targets() + kl_gap_targets()


# ------------------------------------------------------------------ R-MSD (workflow/rules/rmsd.smk)
RMSD = config["rmsd"]
RMSD_VERSIONS = {"teacher_init": "1", "teacher_sft": "1", "pool": "2", "select": "1", "sft": "1", "discriminator": "1", "reward": "2"}


def rmsd_params(stage, **slices):
    """Canonical JSON of an R-MSD stage's config slice plus its version (as stage_params)."""
    return canonical_json({"version": f"rmsd_{stage}/{RMSD_VERSIONS[stage]}", **slices})


def rmsd_slice(*keys):
    return {"rmsd": {k: RMSD[k] for k in keys}}


def rmsd_teacher():
    """The teacher folder: a path from config, or the wider tiny model trained longer by this workflow."""
    return res("rmsd", "teacher", "sft") if RMSD["teacher"]["model"] == "workflow" else RMSD["teacher"]["model"]


def rmsd_student_in():
    """The student Stage 1 starts from: the reference SFT warm-up when enabled, else the initial model."""
    return res("models", "sft") if config["sft"]["enabled"] else init_model()


def rmsd_pool_shards():
    return expand(res("rmsd", "pool", "shard-{shard}.parquet"), shard=SHARDS)


def discriminator_before(phase):
    """D_{P-1}: the one the rewards of phase P use (the warm-up one at phase 0)."""
    p = int(phase)
    return res("rmsd", "discriminator", "warmup") if p == 0 else res("rmsd", "discriminator", f"phase-{p - 1}")


def rmsd_targets():
    if not RMSD["enabled"]:
        return []
    return [*rmsd_pool_shards(), res("models", "rmsd-sft"),
            *[res("rmsd", "discriminator", f"phase-{p}") for p in PHASES]]


ABLATION_NAMES = [v["name"] for v in RMSD["ablation"]["variants"]]


def ablation_params(name):
    """The config one R-MSD ablation variant depends on: all of it but the other variants (adding one reruns
    nothing else)."""
    ablation = RMSD["ablation"]
    variants = [v for v in ablation["variants"] if v["name"] == name]
    return canonical_json({"version": "rmsd_ablation/1", **{k: v for k, v in config.items() if k not in ("study", "rmsd")},
                           "rmsd": {**RMSD, "ablation": {**ablation, "variants": variants}}})
