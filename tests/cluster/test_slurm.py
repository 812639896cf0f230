"""The shipped Slurm profile against a real Slurm: the embedded default runs to completion through the
Slurm executor and a second run has nothing to do; a training job cancelled mid-phase with `scancel`
resumes from its checkpoint and ends with the weights of an uninterrupted run.

Needs a running Slurm whose nodes see this machine's files: `sudo bash scripts/slurm-local.sh` brings one
up on a Debian / Ubuntu machine. Opt-in with VISD_SLURM_TESTS=1; skipped, with the reason, without it or
when there is no Slurm or no node that takes jobs. The runs happen in copies of
the checkout under pytest's temporary folder, or under $VISD_CLUSTER_TMPDIR (a shared filesystem when the
nodes are other machines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.helpers import copy_checkout, job_env, job_stats, run, snakemake_cmd


def slurm_unavailable() -> str | None:
    """Why the Slurm tests do not run here, or None."""
    if os.environ.get("VISD_SLURM_TESTS") != "1":
        # opt-in: they submit real jobs for ≈ 30 min, and on a cluster's login node a plain `pytest` must not
        return "opt-in (real Slurm jobs, ≈ 30 min): VISD_SLURM_TESTS=1 pytest tests/cluster/test_slurm.py"
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not found); `sudo bash scripts/slurm-local.sh` brings up a local one"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer (sinfo timed out); `sudo bash scripts/slurm-local.sh status`"
    if r.returncode != 0:
        return f"Slurm is down ({r.stderr.strip() or 'sinfo failed'}); `sudo bash scripts/slurm-local.sh`"
    states = {s.rstrip("*~#!%$@^-") for s in r.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no Slurm node can take jobs (node states: {sorted(states)})"
    return None


UNAVAILABLE = slurm_unavailable()
pytestmark = [pytest.mark.workflow, pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))]

RUN_TIMEOUT = 3600  # seconds for one workflow run under Slurm (the embedded default: 14.5 min here)


def workdir(tmp_path_factory, name: str) -> Path:
    base = os.environ.get("VISD_CLUSTER_TMPDIR")
    if base:
        path = Path(base) / f"{name}-{os.getpid()}-{time.time_ns()}"
        path.mkdir(parents=True)
        return path
    return tmp_path_factory.mktemp(name)


def submitted_rules(text: str) -> list[str]:
    """Rules of the jobs the executor handed to Slurm ("submitted with SLURM jobid", log under rule_<name>)."""
    return re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/", text)


# ------------------------------------------------------------------ the embedded default, end to end
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    wd = copy_checkout(workdir(tmp_path_factory, "slurm-default"))
    args = ["--cores", "all", "--profile", "slurm"]  # as README says, on config/config.yaml untouched
    t0 = time.monotonic()
    r = run(wd, *args, timeout=RUN_TIMEOUT)
    seconds = time.monotonic() - t0
    print(f"\nembedded default through Slurm: {seconds:.0f} s")
    return wd, r.stdout + r.stderr, seconds, args


def test_embedded_default_runs_through_slurm(default_run):
    wd, text, _, _ = default_run
    planned = job_stats(text)
    submitted = submitted_rules(text)
    assert planned and sum(planned.values()) > 10, text[-3000:]
    # every job but the local `all` went through sbatch, once (no retries were needed)
    assert sorted(submitted) == sorted(r for r, n in planned.items() for _ in range(n) if r != "all")
    assert "Auto-selected partition 'cpu'" in text  # profiles/slurm/partitions.yaml: CPU jobs → cpu
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    phases = cfg["curriculum"]["phases"]
    res = wd / "results"
    for p in range(phases):
        assert (res / f"checkpoints/phase-{p}/policy/config.json").exists()
        assert (res / f"metrics/phase-{p}.parquet").exists()
    assert list((res / "eval").glob("*/*.json")), "evaluation ran"


def test_second_run_has_nothing_to_do(default_run):
    wd, _, _, args = default_run
    r = run(wd, *args)
    assert "Nothing to be done" in r.stdout + r.stderr
    assert not submitted_rules(r.stdout + r.stderr)


# ------------------------------------------------------------------ preemption: scancel mid-phase, rerun
# A small run whose one training phase is long enough to be cancelled in the middle: 150 optimizer steps,
# resumable state every 10 steps. No SFT, evaluation or diagnostics (not what is tested here).
PREEMPT = {
    "data": {"shards": 1, "synth": {"n_videos": 4, "min_duration_s": 2, "max_duration_s": 3}},
    "model": {"tiny": {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64}},
    "sft": {"enabled": False},
    "curriculum": {"phases": 1, "steps_per_phase": 150},
    "rollout": {"limit": 4, "max_new_tokens": 12, "group_size": 2},
    "train": {"prompts_per_step": 2, "micro_batch": 4, "save_every": 10, "anneal_steps": 1000, "lr": 1.0e-4},
    "evaluate": {"enabled": False},
    "diagnostics": {"kl_gap": False},
}
STEPS = PREEMPT["curriculum"]["steps_per_phase"]


def squeue_job(comment_prefix: str) -> str | None:
    """Slurm id of a queued or running job whose comment (set by the executor: rule_<name>_...) matches."""
    r = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        job_id, _, comment = line.partition(" ")
        if comment.startswith(comment_prefix):
            return job_id
    return None


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_cancelled_training_resumes_from_its_checkpoint(tmp_path_factory):
    wd = copy_checkout(workdir(tmp_path_factory, "slurm-preempt"))
    (wd / "preempt.yaml").write_text(yaml.safe_dump(PREEMPT))
    args = ["--cores", "all", "--profile", "slurm", "--configfile", "config/config.yaml", "preempt.yaml"]
    state = wd / "results/checkpoints/phase-0/trainer_state/latest.json"
    log = wd / "logs/train/phase-0.log"

    # 1. run until the trainer has saved a resumable state, then cancel its Slurm job (no automatic retry)
    out = (wd / "run1.out").open("w")
    first = subprocess.Popen(snakemake_cmd(*args, "--retries", "0"), cwd=wd, env=job_env(wd), stdout=out,
                             stderr=subprocess.STDOUT, text=True)
    deadline, cancelled = time.monotonic() + RUN_TIMEOUT, None
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if state.exists() and 0 < json.loads(state.read_text())["phase_step"] < STEPS:
                cancelled = squeue_job("rule_train")
                if cancelled:
                    subprocess.run(["scancel", cancelled], check=True)
                    break
            time.sleep(0.2)
        assert cancelled, f"training finished or never started before it could be cancelled:\n{(wd / 'run1.out').read_text()[-4000:]}"
        assert first.wait(timeout=600) != 0, "the run with the cancelled job must fail"
    finally:
        if first.poll() is None:
            first.kill()
        out.close()
    while squeue_job("rule_train"):  # the job is gone before the state is read
        time.sleep(0.5)
    saved = json.loads(state.read_text())
    k = saved["phase_step"]
    assert 0 < k < STEPS and not saved["complete"], saved
    assert not (wd / "results/checkpoints/phase-0/policy").exists()
    print(f"\ncancelled Slurm job {cancelled} with trainer_state at step {k}/{STEPS}")

    # 2. rerun with the shipped profile: the train job resumes at step k and finishes the phase
    r = run(wd, *args, timeout=RUN_TIMEOUT)
    text = r.stdout + r.stderr
    submitted = submitted_rules(text)
    upstream = {"synth", "prepare_data", "extract_frames", "build_tiny", "rollout", "reward", "judge", "teacher_logits"}
    assert submitted.count("train") == 1 and not upstream & set(submitted), (
        f"only the cancelled training job and what depends on it rerun: {submitted}")
    train_log = log.read_text()
    assert f"at phase step {k}/{STEPS}" in train_log and "resumed from" in train_log, train_log[-2000:]
    import pyarrow.parquet as pq

    steps = pq.read_table(wd / "results/metrics/phase-0.parquet").column("step").to_pylist()
    assert steps == list(range(1, STEPS + 1)), "metrics of the cancelled part are kept, none repeated"
    resumed = {name: load_weights(wd / f"results/checkpoints/phase-0/{name}") for name in ("policy", "teacher")}

    # 3. the same phase uninterrupted (no trainer_state to resume from) ends with the same weights
    shutil.rmtree(wd / "results/checkpoints/phase-0")
    (wd / "results/metrics/phase-0.parquet").unlink()
    run(wd, *args, timeout=RUN_TIMEOUT)
    assert "resumed from" not in log.read_text()
    for name, weights in resumed.items():
        fresh = load_weights(wd / f"results/checkpoints/phase-0/{name}")
        assert fresh.keys() == weights.keys()
        differing = [key for key in fresh if not (fresh[key] == weights[key]).all()]
        assert not differing, f"{name}: resumed and uninterrupted weights differ in {differing[:5]}"
