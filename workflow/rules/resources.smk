# Job sizing for clusters: GPUs, nodes, threads, memory and runtime of every rule, derived from the
# config by visd.plan — the model `visd plan` prints — so a dry run shows what Slurm will be asked for.
#
# - The tiny model of the embedded default runs every stage on CPU, also under Slurm: no GPUs, 1 thread.
# - Real checkpoints: one rollout / teacher / evaluate shard per job on the engine's GPUs (vLLM
#   `engine_args.tensor_parallel_size`, else 1); training one GPU per prompt group of an optimizer step
#   (train.prompts_per_step 16 → 16 GPUs = 2 nodes × 8), multi-node under `srun` (accelerate_args in
#   common.smk); 8 CPUs per GPU; memory for the weights; runtime = 2 × the estimate, × attempt.
# - CPUs go to Slurm as `cpus_per_task`: Snakemake caps `threads` at the submitting machine's --cores
#   (`--cores all` on a 4-core login node would give every GPU job 4 CPUs); `threads:` stays for local runs.
# - `tasks` is never a default resource of a GPU rule (the Slurm executor would turn it into
#   --ntasks-per-gpu); only multi-node training sets tasks = nodes, with tasks_per_gpu = 0.
# Override any value per rule with `set-resources` in profiles/default/config.yaml or on the command
# line (`--set-resources rollout:runtime=600`); sizing constants: `visd plan --help`.
import os

from visd import plan as visd_plan

# envs/*.post-deploy.sh install this checkout into each conda environment (pip install -e).
os.environ.setdefault("VISD_SOURCE", str(Path(workflow.basedir).resolve()))

SIZING = visd_plan.Assumptions()
ACCELERATE_CONFIG = str(Path(workflow.basedir, "config", "accelerate", "fsdp.yaml").resolve())


def _scaled_runtime(minutes):
    """Runtime in minutes, doubled on every retry (a job killed at its time limit gets more)."""
    return lambda wildcards, attempt: minutes * attempt


def job_threads(rule):
    return visd_plan.job_resources(config, rule, SIZING)["threads"]


def job_resources(rule):
    """Resources of one job of an engine stage (rollout, judge, teacher_logits, evaluate, kl_gap, sft)."""
    r = visd_plan.job_resources(config, rule, SIZING)
    out = {"mem_mb": r["mem_mb"], "runtime": _scaled_runtime(r["runtime"])}
    if r["gpu"]:
        out.update(gpu=r["gpu"], cpus_per_task=r["threads"])
    return out


def train_resources():
    """Training: CPU (tiny model), one node with `gpu` GPUs, or `nodes` nodes of `gres` GPUs each.

    Multi-node jobs are MPI-style for the Slurm executor (`mpi`, `tasks` = nodes): the job's shell runs
    once, in the batch step, and starts one `accelerate launch` per node itself with `srun`."""
    r = visd_plan.job_resources(config, "train", SIZING)
    out = {"mem_mb": r["mem_mb"], "runtime": _scaled_runtime(r["runtime"])}
    if not r["gpu"]:
        return out
    out.update(accelerate_config=ACCELERATE_CONFIG, cpus_per_task=r["threads"])
    if r["nodes"] == 1:
        out["gpu"] = r["gpu"]
        return out
    out.update(nodes=r["nodes"], gres=f"gpu:{r['gpu']}", tasks=r["nodes"], tasks_per_gpu=0, mpi="srun")
    return out
