"""The R-MSD recipe (`--configfile config/config.yaml config/recipes/rmsd.yaml`) through the real Snakemake
workflow on a small copy of the embedded default: the workflow builds and trains its own wider teacher,
samples the K-response pool, runs Stage-1 SFT on the best kept response, warms the discriminator up,
then two Stage-2 phases in which rewards mix D with the format/task/content checks, the policy trains
with a KL to the Stage-1 model, and the discriminator is updated online; then evaluation and the report.
"""

import json
import math
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from tests.workflow.test_default_workflow import SMALL as BASE_SMALL
from tests.workflow.test_default_workflow import planned_jobs
from tests.workflow.test_default_workflow import snakemake as _snakemake

pytestmark = pytest.mark.workflow

SMALL = {
    **BASE_SMALL,  # the default workflow test's small copy of the embedded default
    "rmsd": {
        "teacher": {"sft_steps": 12, "tiny": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                                               "num_attention_heads": 4, "num_key_value_heads": 2}},
        # τ = 0: a 12-step teacher writes no valid response, and with τ = 0.3 every input would fall back
        # (Stage 1 then stops, naming the fix); the fallback itself is tested in tests/unit/test_rmsd_*.py
        "pool": {"k": 3, "tau": 0.0, "max_new_tokens": 12},
        "sft": {"batch_size": 4},
        "discriminator": {"batch_size": 4},
    },
}
CONFIGS = ("config/config.yaml", "config/recipes/rmsd.yaml", "small.yaml")


def snakemake(wd, *args, check=True, extra=()):
    return _snakemake(wd, *args, check=check, configs=(*CONFIGS, *extra))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("rmsd")
    import shutil

    shutil.copytree(REPO / "config", wd / "config")
    (wd / "small.yaml").write_text(yaml.safe_dump(SMALL))
    snakemake(wd)
    return wd


def rows(path_glob, wd):
    out = []
    for p in sorted((wd / "results").glob(path_glob)):
        out.extend(pq.read_table(p).to_pylist())
    return out


def test_pool_is_scored_filtered_and_matched(run_dir):
    pool = rows("rmsd/pool/shard-*.parquet", run_dir)
    responses = rows("rmsd/responses/shard-*.parquet", run_dir)
    assert pool and len(pool) == len(responses), "the pool is the cached responses with the selection added"
    by_input = defaultdict(list)
    for r in pool:
        by_input[r["sample_id"]].append(r)
    tau = SMALL["rmsd"]["pool"]["tau"]
    n_fallback = 0
    for sid, rs in by_input.items():
        assert sorted(r["sample_index"] for r in rs) == [0, 1, 2], sid  # K = 3
        for r in rs:
            assert r["quality"] == pytest.approx((1.0 if r["valid"] else 0.0) * r["metric_value"])
            assert r["kept"] == (r["quality"] >= tau)
            assert r["match_prob"] == 0.0 or r["kept"]
        total = sum(r["match_prob"] for r in rs)
        if any(r["kept"] for r in rs):
            assert total == pytest.approx(1.0), sid
        else:
            n_fallback += 1
            assert total == 0.0
    # every input without a kept response is counted in the rejects, with the reason
    rejects = rows("rejects/rmsd_pool/shard-*.parquet", run_dir)
    assert sum(1 for r in rejects if r["reason"] == "no_kept_response") == n_fallback
    assert len({r["teacher_id"] for r in pool}) == 1


def test_stage1_discriminator_and_stage2_chain(run_dir):
    res = run_dir / "results"
    assert (res / "models/rmsd-sft/config.json").exists()
    sft = pq.read_table(res / "metrics/rmsd-sft.parquet").to_pylist()
    assert sft and all(math.isfinite(r["loss"]) for r in sft)
    for name in ("warmup", "phase-0", "phase-1"):
        assert (res / f"rmsd/discriminator/{name}").is_dir(), name
        m = pq.read_table(res / f"metrics/rmsd-discriminator-{name}.parquet").to_pylist()
        assert m and all(math.isfinite(r["loss"]) for r in m), name
    for p in range(2):
        rewards = rows(f"rewards/phase-{p}/shard-*.parquet", run_dir)
        assert rewards
        for r in rewards:
            for key in ("d_score", "r_outer", "r_task", "r_content"):
                assert r[key] is not None and math.isfinite(r[key]), (p, key)
        metrics = pq.read_table(res / f"metrics/phase-{p}.parquet").to_pylist()
        assert metrics and all(math.isfinite(r["loss"]) for r in metrics)
        assert (res / f"checkpoints/phase-{p}/policy/config.json").exists()
    # phase 0 starts from the Stage-1 model, not the plain SFT warm-up
    from visd.io import checkpoint_hash

    r0 = rows("rollouts/phase-0/shard-*.parquet", run_dir)
    assert r0 and {r["policy_hash"] for r in r0} == {checkpoint_hash(str(res / "models/rmsd-sft"))}


def audit(run_dir, query):
    import subprocess

    from tests.conftest import visd_bin

    out = subprocess.run([visd_bin(), "audit", "--results", str(run_dir / "results"), "--query", query,
                          "--format", "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_report_and_audit_cover_rmsd(run_dir):
    res = run_dir / "results"
    assert (res / "report/index.html").exists()
    for fig in ("rmsd_pool_quality", "rmsd_discriminator", "rmsd_sft_loss", "rmsd_reward_terms"):
        assert (res / f"report/{fig}.png").stat().st_size > 10_000, fig
    assert list((res / "eval").glob("*/*.json")), "evaluation ran"
    pool = rows("rmsd/pool/shard-*.parquet", run_dir)
    quality = {r["task_type"]: r for r in audit(run_dir, "rmsd_teacher_quality")}
    assert quality["all"]["responses"] == len(pool)
    by_tau = {(r["task_type"], r["source"], r["tau"]): r for r in audit(run_dir, "rmsd_kept_by_tau")}
    for tau in (0.0, 0.2, 0.3, 0.5):
        share = sum(r["quality"] >= tau for r in pool) / len(pool)
        assert by_tau["all", "q >= tau", tau]["kept_ratio"] == pytest.approx(share, abs=1e-4), tau
    assert by_tau["all", "run (kept flag)", 0.0]["kept_ratio"] == pytest.approx(sum(r["kept"] for r in pool) / len(pool), abs=1e-4)
    steps = audit(run_dir, "rmsd_discriminator_steps")
    n_steps = sum(len(pq.read_table(p)) for p in res.glob("metrics/rmsd-discriminator-*.parquet"))
    assert len(steps) == n_steps and steps[0]["kind"] == "warmup"


def test_second_run_does_nothing(run_dir):
    assert planned_jobs(run_dir, configs=CONFIGS) == {}


def test_changing_tau_reselects_the_pool_without_resampling_the_teacher(run_dir):
    (run_dir / "tau.yaml").write_text(yaml.safe_dump({"rmsd": {"pool": {"tau": 0.5}}}))
    jobs = planned_jobs(run_dir, configs=(*CONFIGS, "tau.yaml"))
    assert jobs.get("rmsd_pool") == 2 and jobs.get("rmsd_sft") == 1 and jobs.get("train") == 2, jobs
    # the teacher's responses are cached: τ only re-selects among them
    assert not {"rmsd_teacher_pool", "rmsd_teacher_init", "rmsd_teacher_sft", "sft", "extract_frames"} & set(jobs), jobs


def test_ablation_target_runs_variants_from_the_one_pool(run_dir):
    variants = [{"name": "k1", "k": 1, "tau": 0.0, "weighting": True},
                {"name": "k3-uniform", "k": 3, "tau": 0.0, "weighting": False}]
    # one Stage-2 phase per variant (CI time); the main run's jobs do not depend on it
    (run_dir / "ablation.yaml").write_text(yaml.safe_dump({"rmsd": {"ablation": {"variants": variants}},
                                                           "curriculum": {"phases": 1}}))
    jobs = planned_jobs(run_dir, "rmsd_ablation", configs=(*CONFIGS, "ablation.yaml"))
    assert jobs == {"rmsd_ablation_run": 2, "rmsd_ablation_summary": 1, "rmsd_ablation": 1}, jobs  # pool reused
    snakemake(run_dir, "--", "rmsd_ablation", extra=("ablation.yaml",))
    res = run_dir / "results"
    table = json.loads((res / "rmsd_ablation/ablation.json").read_text())["rows"]
    assert [r["variant"] for r in table] == ["k1", "k3-uniform"]
    main_pool = rows("rmsd/pool/shard-*.parquet", run_dir)
    for r in table:
        pool = rows(f"rmsd_ablation/{r['variant']}/rmsd/pool/shard-*.parquet", run_dir)
        assert len(pool) == len({p["sample_id"] for p in main_pool}) * r["k"]
        assert r["kept_ratio"] == pytest.approx(sum(p["kept"] for p in pool) / len(pool))
        assert r["stage1"] is not None and r["final"] is not None
        assert (res / f"rmsd_ablation/{r['variant']}/checkpoints/phase-0/policy/config.json").exists()
        assert [p["tag"] for p in json.loads((res / f"rmsd_ablation/{r['variant']}/done.json").read_text())["curve"]] \
            == ["stage1", "phase-0"]
    # τ = 0 keeps every response; a response's q is the cached q of the same sample index
    q = {(p["sample_id"], p["sample_index"]): p["quality"] for p in rows("rmsd/responses/shard-*.parquet", run_dir)}
    uni = rows("rmsd_ablation/k3-uniform/rmsd/pool/shard-*.parquet", run_dir)
    assert all(p["kept"] for p in uni) and all(p["quality"] == q[p["sample_id"], p["sample_index"]] for p in uni)
    assert "| k1 | 1 | 0.0 | q |" in (res / "rmsd_ablation/ablation.md").read_text()
