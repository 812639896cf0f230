"""The paper-scale config (config/experiments/visd-qwen25vl7b-stgr.yaml) resolves as intended on a cluster.

No cluster, GPU or model needed: a dry run with the shipped Slurm profile checks the DAG, shard counts and
per-job resources; then the real Slurm executor runs against stand-in `sbatch` / `squeue` commands that
record each submission, so the test sees the exact sbatch lines a cluster would get (jobs report FAILED
at once; nothing runs). Both print what they found (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import (
    REPO,
    copy_checkout,
    job_env,
    job_stats,
    planned_jobs,
    run,
)

pytestmark = pytest.mark.workflow

EXPERIMENT = "config/experiments/visd-qwen25vl7b-stgr.yaml"
SHARDS, PHASES, TEACHER_PHASES = 16, 4, 3  # λ reaches 0 after phase 2 (600 steps at 200 per phase)
EXPECTED_JOBS = {
    "missing_model": 1,  # the model folder is not here: a stand-in job in the dry run
    "prepare_data": 1,
    "extract_frames": SHARDS,
    "rollout": SHARDS * PHASES,
    "reward": SHARDS * PHASES,
    "judge": SHARDS * TEACHER_PHASES,
    "teacher_logits": SHARDS * TEACHER_PHASES,
    "train": PHASES,
    "evaluate": 1 + PHASES,  # start + every phase, one benchmark (vstar)
    "kl_gap": 1 + PHASES,
    "report": 1,
    "all": 1,
}
ONE_GPU_RULES = ("rollout", "teacher_logits", "evaluate", "kl_gap")

FAKE = {  # stand-ins for the Slurm commands the executor calls
    # the executor may submit several jobs at once: one lock around the counter and the one-line append
    "sbatch": """#!/bin/bash
exec 9>>"$FAKE_SLURM/sbatch.lock"; flock 9
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_SLURM/next"
line="$(printf '%s\\t' "$n"; printf '%q ' "$@")"
printf '%s\\n' "$line" >> "$FAKE_SLURM/sbatch.log"
echo $n
""",
    "squeue": """#!/bin/sh
cut -f1 "$FAKE_SLURM/sbatch.log" 2>/dev/null | sed 's/$/|FAILED/'
""",
    "scontrol": """#!/bin/sh
[ "$1 $2" = "show config" ] && echo "MinJobAge               = 600 sec"
exit 0
""",
    "sacct": "#!/bin/sh\necho 'sacct: accounting storage is disabled' >&2\nexit 1\n",
    "scancel": "#!/bin/sh\nexit 0\n",
    "sinfo": "#!/bin/sh\nprintf 'cpu*\\ngpu\\n'\n",
}


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory) -> Path:
    """A copy of the checkout with stand-in annotation files at the experiment's data paths."""
    wd = copy_checkout(tmp_path_factory.mktemp("experiment"))
    fixtures = REPO / "tests" / "fixtures"
    for src, dst in [(fixtures / "stgr" / "openo3_style.json", wd / "data/stgr/STGR-RL.json"),
                     (fixtures / "vstar" / "vstar_annotations.json", wd / "data/vstar/V_STaR_test.json")]:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        (dst.parent / "videos").mkdir(exist_ok=True)
    return wd


def _table(jobs: list[dict]) -> str:
    seen, rows = set(), []
    for j in jobs:
        if j["rule"] in seen:
            continue
        seen.add(j["rule"])
        res = {k: v for k, v in j["resources"].items() if k in ("gpu", "nodes", "gres", "tasks", "tasks_per_gpu",
                                                               "mpi", "mem_mb", "runtime")}
        rows.append(f"  {j['rule']:<16} threads={j['threads']:<3} {res}")
    return "\n".join(rows)


def test_dry_run_plans_the_paper_scale_dag(exp_dir):
    r = run(exp_dir, "-n", "--profile", "slurm", "--configfile", EXPERIMENT)
    text = r.stdout + r.stderr
    jobs = planned_jobs(text)
    print("\nplanned jobs (first of each rule):\n" + _table(jobs))
    assert "model.init" in text and "does not exist" in text, "a missing model folder is reported"
    assert job_stats(text) == EXPECTED_JOBS
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j)
    assert {j["wildcards"]["shard"] for j in by_rule["rollout"]} == {str(s) for s in range(SHARDS)}
    assert {j["wildcards"]["phase"] for j in by_rule["teacher_logits"]} == {"0", "1", "2"}
    for rule in ONE_GPU_RULES:
        for j in by_rule[rule]:
            assert j["resources"].get("gpu") == "1", (rule, j["resources"])
    for j in jobs:  # the Slurm executor would turn `tasks` into --ntasks-per-gpu on GPU jobs
        if "gpu" in j["resources"] or "gres" in j["resources"]:
            assert "tasks" not in j["resources"] or j["resources"].get("tasks_per_gpu") == "0", j
            assert int(j["resources"]["cpus_per_task"]) == 8 * int(j["resources"].get("gpu", 8)), j
    for j in by_rule["judge"]:
        assert "gpu" not in j["resources"], "the LLM judge is an HTTP client: a CPU job"
    for j in by_rule["train"]:
        res = j["resources"]
        assert (res["nodes"], res["gres"], res["tasks"], res["tasks_per_gpu"], res["mpi"]) == (
            "2", "gpu:8", "2", "0", "srun"), res
        assert "gpu" not in res, "multi-node jobs ask per node (gres), not per job (gpu)"
    # threads (→ --cpus-per-task) are capped by --cores in a dry run; the sbatch test checks them
    for j in by_rule["extract_frames"]:
        assert "gpu" not in j["resources"]


def _fake_slurm(root: Path) -> dict:
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in FAKE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = job_env(root.parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_SLURM"] = str(root)
    return env


def _touch(paths, t, root: Path):
    for p in (root / q for q in paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.mkdir() if p.suffix == "" else p.write_bytes(b"")
        os.utime(p, (t, t))


def _submissions(wd: Path, env: dict, targets: list[str]) -> dict[str, list[str]]:
    """Run the Slurm executor for `targets` against the stand-in commands: rule → sbatch argument lists."""
    log = Path(env["FAKE_SLURM"]) / "sbatch.log"
    log.unlink(missing_ok=True)
    r = run(wd, "--profile", "slurm", "--configfile", EXPERIMENT, "--retries", "0", "--cores", "all",
            "--slurm-init-seconds-before-status-checks", "1", *targets, env=env, check=False, timeout=300)
    assert log.exists(), f"nothing was submitted:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    out: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        args = shlex.split(line.split("\t", 1)[1])
        comment = args[args.index("--comment") + 1]
        out[re.match(r"rule_(\w+?)(_wildcards_.*)?$", comment).group(1)] = args
    return out


def _flags(args: list[str]) -> str:
    """The resource part of an sbatch line (without job name, log, comment, workdir, --wrap)."""
    keep, skip = [], {"--job-name", "--output", "--comment", "-D"}
    it = iter(args)
    for a in it:
        if a in skip:
            next(it, None)
        elif not a.startswith("--wrap") and a not in ("--parsable", "--export=ALL"):
            keep.append(a)
    return " ".join(keep)


def test_sbatch_lines_of_the_paper_scale_jobs(exp_dir, tmp_path):
    """Each GPU rule's sbatch line, from the Slurm executor itself: upstream outputs are stand-in files,
    so the jobs of interest are the first ones submitted."""
    wd = exp_dir
    env = _fake_slurm(wd / ".fake-slurm")
    res = Path("results")  # targets as the rules name them, relative to the working directory
    t0 = time.time() - 3600
    _touch([Path("data/models/Qwen2.5-VL-7B-Instruct"), Path("data/stgr/STGR-RL.json"),
            Path("data/vstar/V_STaR_test.json")], t0, wd)
    _touch([res / "samples.parquet"], t0 + 10, wd)
    _touch([res / "frames" / f"shard-{k}.parquet" for k in range(SHARDS)], t0 + 20, wd)
    seen = _submissions(wd, env, [str(res / "rollouts/phase-0/shard-0.parquet"), str(res / "eval/start/vstar.json"),
                                  str(res / "diagnostics/kl_gap/start.json")])
    phase0 = [res / t / "phase-0" / f"shard-{k}.parquet" for t in ("rollouts", "rewards") for k in range(SHARDS)]
    _touch(phase0 + [res / "judge/phase-0" / f"shard-{k}.parquet" for k in range(1, SHARDS)]
           + [res / "teacher/phase-0" / f"shard-{k}.parquet" for k in range(2, SHARDS)], t0 + 30, wd)
    seen |= _submissions(wd, env, [str(res / "judge/phase-0/shard-0.parquet"), str(res / "teacher/phase-0/shard-1.parquet")])
    _touch([res / "judge/phase-0/shard-0.parquet"] + [res / "teacher/phase-0" / f"shard-{k}.parquet" for k in (0, 1)],
           t0 + 40, wd)
    seen |= _submissions(wd, env, [str(res / "checkpoints/phase-0/policy")])
    print("\nsbatch lines (resources only):\n" + "\n".join(f"  {rule:<16} sbatch {_flags(a)}" for rule, a in seen.items()))
    (tmp_path / "sbatch.json").write_text(json.dumps(seen, indent=1))

    assert set(seen) == {"rollout", "evaluate", "kl_gap", "judge", "teacher_logits", "train"}
    for rule in ONE_GPU_RULES:
        a = seen[rule]
        assert "--gpus=1" in a and "--cpus-per-task=8" in a, (rule, a)
        assert a[a.index("-p") + 1] == "gpu", (rule, a)
        assert not any(x.startswith(("--ntasks", "--nodes")) for x in a), (rule, a)
    judge = seen["judge"]
    assert judge[judge.index("-p") + 1] == "cpu" and not any("gpu" in x for x in judge), judge
    train = seen["train"]
    assert {"--nodes=2", "--gres=gpu:8", "--ntasks=2", "--cpus-per-task=64"} <= set(train), train
    assert train[train.index("-p") + 1] == "gpu", train
    assert not any(x.startswith(("--gpus", "--ntasks-per-gpu")) for x in train), train
    assert int(train[train.index("--mem") + 1]) >= 8 * 32 * 1024  # host memory per node
    assert int(train[train.index("-t") + 1]) >= 30


def test_a_real_run_without_the_model_stops_before_any_job(exp_dir, tmp_path):
    wd = copy_checkout(tmp_path / "nomodel")
    for src in ("data/stgr/STGR-RL.json", "data/vstar/V_STaR_test.json"):
        (wd / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(exp_dir / src, wd / src)
    r = run(wd, "--cores", "1", "--configfile", EXPERIMENT, check=False)
    assert r.returncode != 0
    assert "model.init: the folder 'data/models/Qwen2.5-VL-7B-Instruct' does not exist" in r.stderr + r.stdout
    assert not (wd / "results").exists(), "nothing ran"
