"""The trainer as the workflow runs it: a subprocess killed with SIGKILL and rerun resumes exactly; two
data-parallel processes (``accelerate launch --multi_gpu`` on CPU, gloo) give the update of one process
with the same global batch; a second phase continues the global step, λ and the optimizer state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from tests.train import helpers as H

TIMING = ("step_time_s", "tokens_per_s")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return H.shared_data(tmp_path_factory)


def _params(**train):
    p = H.params("visd", lam0=0.5, **train)
    p["teacher"] = {"hint": ["answer", "window", "keyframes"]}
    return p


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> float:
    wa, wb = H.load_weights(a), H.load_weights(b)
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff <= atol, f"{a} vs {b}: max |Δw| = {diff}"
    return diff


def _metrics(path: Path):
    return pq.read_table(path).to_pandas().drop(columns=list(TIMING))


def test_sigkill_then_rerun_resumes_to_identical_weights(data, tmp_path):
    base, phase = data
    p = _params(save_every=2, prompts_per_step=1, micro_batch=3)  # 8 steps, a state every 2
    ref = tmp_path / "uninterrupted"
    r = H.run_train(H.train_cmd(base, phase, ref, p, metrics=ref / "m.parquet"))
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "visd.train", *H.train_cmd(base, phase, out, p, metrics=out / "m.parquet")]
    proc = subprocess.Popen(cmd, env=H.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "trainer_state" / "latest.json"
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["phase_step"] >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = json.loads(latest.read_text())["phase_step"]
    assert 2 <= killed_at < 8
    assert not (out / "policy").exists() and not (out / "m.parquet").exists()  # nothing looks complete

    r = H.run_train(H.train_cmd(base, phase, out, p, metrics=out / "m.parquet"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at phase step {killed_at}/8" in r.stderr
    _same_weights(ref / "policy", out / "policy")  # bit-identical
    _same_weights(ref / "teacher", out / "teacher")
    assert _metrics(ref / "m.parquet").equals(_metrics(out / "m.parquet"))

    # a different config does not resume from this state
    r = H.run_train(H.train_cmd(base, phase, out, _params(save_every=2, prompts_per_step=2, micro_batch=3)))
    assert r.returncode == 0 and "fingerprint mismatch" in r.stderr


def test_two_processes_equal_one_process(data, tmp_path):
    base, phase = data
    p = _params(prompts_per_step=3, micro_batch=2, save_every=10)  # 12 rollouts/step: 6 per process, 3 micro-batches
    p["curriculum"]["steps_per_phase"] = 2
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = H.run_train(H.train_cmd(base, phase, one, p, metrics=one / "m.parquet"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(29500 + os.getpid() % 1000), "-m", "visd.train"]
    r2 = subprocess.run(launch + H.train_cmd(base, phase, two, p, metrics=two / "m.parquet"), env=H.env(),
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "world size 2" in r2.stderr  # two processes really ran
    m1, m2 = pq.read_table(one / "m.parquet").to_pandas(), pq.read_table(two / "m.parquet").to_pandas()
    assert m1["world_size"].tolist() == [1, 1] and m2["world_size"].tolist() == [2, 2]
    for col in ("loss", "grad_norm", "omega_mean", "omega_min", "omega_max", "ratio_mean", "ratio_clip_frac",
                "reward_mean"):
        assert m2[col].tolist() == pytest.approx(m1[col].tolist(), rel=1e-5, abs=1e-7), col
    assert m1["tokens"].tolist() == m2["tokens"].tolist() and m1["sequences"].tolist() == m2["sequences"].tolist()
    init = H.load_weights(base["init"])
    moved = max(float((H.load_weights(one / "policy")[k] - init[k]).abs().max()) for k in init)
    diff = _same_weights(one / "policy", two / "policy", atol=1e-5)
    assert diff < 1e-2 * moved  # float reduction order only
    _same_weights(one / "teacher", two / "teacher", atol=1e-6)


def test_second_phase_continues_global_step_lambda_and_optimizer(data, tmp_path):
    base, phase = data
    p = _params(prompts_per_step=4, micro_batch=4, anneal_steps=3, save_every=10)
    p["curriculum"]["steps_per_phase"] = 2
    c0, c1 = tmp_path / "checkpoints" / "phase-0", tmp_path / "checkpoints" / "phase-1"
    r = H.run_train(H.train_cmd(base, phase, c0, p, metrics=tmp_path / "m0.parquet"))
    assert r.returncode == 0, r.stderr[-3000:]
    # phase 1 trains on the same tables (the test only checks the bookkeeping)
    r = H.run_train(H.train_cmd(base, phase, c1, p, phase=1, policy_in=str(c0 / "policy"),
                                teacher_in=str(c0 / "teacher"), metrics=tmp_path / "m1.parquet"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optimizer state continued" in r.stderr
    m0, m1 = pq.read_table(tmp_path / "m0.parquet").to_pandas(), pq.read_table(tmp_path / "m1.parquet").to_pandas()
    assert m0["global_step"].tolist() == [1, 2] and m1["global_step"].tolist() == [3, 4]
    assert m1["lambda"].tolist() == pytest.approx([0.5 / 3, 0.0])  # λ(s) = λ0 (T_a − (s−1)) / T_a, T_a = 3
    assert m1["ema_updated"].tolist() == [True, False]
    info = json.loads((c1 / "policy" / "visd_train.json").read_text())
    assert info["global_step"] == 4 and info["phase"] == 1 and info["lambda_next"] == 0.0
    # the teacher stops moving once λ = 0: phase-1 teacher = one EMA step from the phase-0 teacher
    t0, t1 = H.load_weights(c0 / "teacher"), H.load_weights(c1 / "teacher")
    assert any(not torch.equal(t0[k], t1[k]) for k in t0)


# ---------------------------------------------------------------------------- FSDP2 (train.sharding: fsdp)

def _launch(nproc: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(29600 + (os.getpid() + nproc) % 1000), "-m", "visd.train"]


def test_fsdp_two_processes_equal_one_process_and_resume(data, tmp_path):
    """Policy, EMA teacher and optimizer sharded over 2 CPU processes (gloo): the same update as one unsharded
    process; the sharded trainer state resumes to bit-identical weights; the next phase continues the
    sharded AdamW moments."""
    base, phase = data
    p = _params(prompts_per_step=3, micro_batch=2, save_every=1, sharding="fsdp")
    p["curriculum"]["steps_per_phase"] = 3
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = H.run_train(H.train_cmd(base, phase, one, p, metrics=one / "m.parquet"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert "sharding none" in r1.stderr  # one process has nothing to shard
    r2 = subprocess.run(_launch(2) + H.train_cmd(base, phase, two, p, metrics=two / "m.parquet"), env=H.env(),
                        capture_output=True, text=True, timeout=600, check=False)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "world size 2" in r2.stderr and "sharding fsdp" in r2.stderr
    step_dir = two / "trainer_state" / json.loads((two / "trainer_state" / "latest.json").read_text())["dir"]
    assert (step_dir / "sharded" / ".metadata").exists() and not (step_dir / "teacher.safetensors").exists()
    assert {f.name for f in step_dir.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    m1, m2 = pq.read_table(one / "m.parquet").to_pandas(), pq.read_table(two / "m.parquet").to_pandas()
    assert m2["world_size"].tolist() == [2, 2, 2]
    for col in ("loss", "grad_norm", "omega_mean", "omega_min", "omega_max", "ratio_mean", "reward_mean"):
        assert m2[col].tolist() == pytest.approx(m1[col].tolist(), rel=1e-5, abs=1e-7), col
    init = H.load_weights(base["init"])
    moved = max(float((H.load_weights(one / "policy")[k] - init[k]).abs().max()) for k in init)
    diff = _same_weights(one / "policy", two / "policy", atol=1e-5)  # the gathered HF folder, full shapes
    assert diff < 1e-2 * moved
    _same_weights(one / "teacher", two / "teacher", atol=1e-6)

    # resume: kill the launcher and both processes once step 1 is saved, rerun: the same weights
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_launch(2) + H.train_cmd(base, phase, resumed, p, metrics=resumed / "m.parquet"),
                            env=H.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = resumed / "trainer_state" / "latest.json"
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["phase_step"] >= 1:
            # the launcher starts its workers in sessions of their own: kill the whole tree, as scancel would
            for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                child.kill()
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    time.sleep(1)
    killed_at = json.loads(latest.read_text())["phase_step"]
    assert 1 <= killed_at < 3 and not (resumed / "policy").exists()
    r = subprocess.run(_launch(2) + H.train_cmd(base, phase, resumed, p, metrics=resumed / "m.parquet"),
                       env=H.env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at phase step {killed_at}/3" in r.stderr, r.stderr
    _same_weights(two / "policy", resumed / "policy")  # bit-identical
    _same_weights(two / "teacher", resumed / "teacher")

    # phase 1 continues the sharded optimizer state of phase 0
    c1 = tmp_path / "phase-1"
    r = subprocess.run(_launch(2) + H.train_cmd(base, phase, c1, p, phase=1, policy_in=str(two / "policy"),
                                                teacher_in=str(two / "teacher")),
                       env=H.env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optimizer state continued" in r.stderr


def test_sharding_setting_and_deepspeed_refused(data, tmp_path, monkeypatch):
    from visd import sharding

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not sharding.wanted("fsdp", 1) and sharding.wanted("fsdp", 2)
    assert not sharding.wanted("auto", 2) and not sharding.wanted("none", 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --config_file config/accelerate/fsdp.yaml
    assert sharding.wanted("auto", 2) and not sharding.wanted("none", 2)
    base, phase = data
    r = subprocess.run([sys.executable, "-m", "visd.train", *H.train_cmd(base, phase, tmp_path / "ds", _params())],
                       env={**H.env(), "ACCELERATE_USE_DEEPSPEED": "true"}, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "DeepSpeed is not supported" in r.stderr and "config/accelerate/fsdp.yaml" in r.stderr
    assert not (tmp_path / "ds").exists()
