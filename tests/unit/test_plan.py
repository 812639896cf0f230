"""`visd plan`: job counts agree with Snakemake's DAG; sizes scale as the formulas say; job resources."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from visd import plan

EXPERIMENT = REPO / "config" / "experiments" / "visd-qwen25vl7b-stgr.yaml"


def dry_run_jobs(tmp_path, overrides: dict) -> dict[str, int]:
    """Job stats of `snakemake -n` on the embedded default + overrides, in an empty working directory."""
    (tmp_path / "over.yaml").write_text(yaml.safe_dump(overrides))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                        "--configfile", str(REPO / "config" / "config.yaml"), str(tmp_path / "over.yaml")],
                       check=False, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (r.stdout + r.stderr).split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}
    return {k: v for k, v in jobs.items() if k not in ("total", "all")}


@pytest.mark.workflow
@pytest.mark.parametrize("overrides", [
    {},
    {"data": {"shards": 3}, "curriculum": {"phases": 4, "steps_per_phase": 5}, "train": {"anneal_steps": 12}},
    {"train": {"recipe": "grpo"}, "sft": {"enabled": False}, "evaluate": {"start": False}},
    {"train": {"recipe": "opsd", "opsd": {"teacher": "live"}}, "diagnostics": {"kl_gap": False}},
    {"teacher": {"hint": ["answer", "window"]}, "curriculum": {"steps_per_phase": None}},
    yaml.safe_load((REPO / "config" / "recipes" / "rmsd.yaml").read_text()),
], ids=["default", "lambda-reaches-zero", "grpo", "opsd-live", "no-feedback", "rmsd"])
def test_job_counts_match_snakemake(tmp_path, overrides):
    cfg = plan.load_config(overrides=[])
    cfg = plan.load_config(params=json.dumps(overrides)) if overrides else cfg
    assert plan.job_counts(cfg) == dry_run_jobs(tmp_path, overrides)


def test_load_config_merges_like_snakemake():
    cfg = plan.load_config([EXPERIMENT], overrides=["rollout.group_size=8", "teacher.top_k=64"])
    assert cfg["rollout"]["group_size"] == 8 and cfg["teacher"]["top_k"] == 64
    assert cfg["rollout"]["temperature"] == 1.0  # from the experiment
    assert cfg["data"]["synth"]["enabled"] is False and cfg["data"]["synth"]["n_videos"] == 24  # merged, not replaced


def test_cache_bytes_per_token_through_the_measured_points():
    assert plan.cache_bytes_per_token(16) == pytest.approx(46.0)
    assert plan.cache_bytes_per_token(64) == pytest.approx(152.3)
    assert plan.cache_bytes_per_token(32) == pytest.approx((46.0 + 152.3) / 2 - (152.3 - 46.0) / 6, rel=1e-9)


def experiment(**over) -> dict:
    return plan.load_config([EXPERIMENT], overrides=[f"{k}={json.dumps(v)}" for k, v in over.items()])


RECORDS = {"stgr": 20000, "vstar": 2000}


def test_paper_scale_plan():
    p = plan.make_plan(experiment(), records=RECORDS)
    assert p.jobs == {"prepare_data": 1, "extract_frames": 16, "rollout": 64, "reward": 64, "judge": 48,
                      "teacher_logits": 48, "train": 4, "evaluate": 5, "kl_gap": 5, "report": 1}
    assert p.prompts_per_phase == 16 * 200 and p.steps_per_phase == 200
    assert p.rollouts_per_phase == 4 * 3200
    assert p.completion_tokens_per_phase == 12800 * 384
    # teacher cache: completion tokens of the 3 phases with λ > 0 × bytes per token at K = 16
    assert p.teacher_cache_bytes == pytest.approx(12800 * 384 * 3 * 46.0)
    assert p.judge_calls == 12800 * 3
    st = p.stages
    assert (st["train"].nodes, st["train"].gpus_per_job) == (2, 8)
    assert st["rollout"].gpus_per_job == st["teacher_logits"].gpus_per_job == st["evaluate"].gpus_per_job == 1
    assert st["judge"].gpus_per_job == 0 and st["extract_frames"].gpus_per_job == 0
    assert p.gpu_hours == pytest.approx(sum(s.jobs * s.seconds_per_job * s.gpus_per_job * s.nodes for s in st.values()) / 3600)
    assert p.wall_seconds > st["train"].seconds_per_job * 4


def test_scaling_with_group_size_top_k_phases_and_data():
    base = plan.make_plan(experiment(), records=RECORDS)
    g8 = plan.make_plan(experiment(**{"rollout.group_size": 8}), records=RECORDS)
    assert g8.teacher_cache_bytes == pytest.approx(2 * base.teacher_cache_bytes)
    assert g8.stages["rollout"].gpu_hours > base.stages["rollout"].gpu_hours
    k64 = plan.make_plan(experiment(**{"teacher.top_k": 64}), records=RECORDS)
    assert k64.teacher_cache_bytes / base.teacher_cache_bytes == pytest.approx(152.3 / 46.0)
    assert k64.jobs == base.jobs
    ph8 = plan.make_plan(experiment(**{"curriculum.phases": 8}), records=RECORDS)
    assert ph8.jobs["rollout"] == 2 * base.jobs["rollout"] and ph8.jobs["train"] == 8
    assert ph8.jobs["teacher_logits"] == base.jobs["teacher_logits"]  # λ = 0 after step 600 either way
    assert ph8.teacher_cache_bytes == pytest.approx(base.teacher_cache_bytes)
    s32 = plan.make_plan(experiment(**{"data.shards": 32, "rollout.limit": 100}), records=RECORDS)
    assert s32.jobs["rollout"] == 2 * base.jobs["rollout"]
    assert s32.prompts_per_phase == base.prompts_per_phase  # the same data, in twice as many jobs
    assert s32.stages["rollout"].seconds_per_job < base.stages["rollout"].seconds_per_job
    more = plan.make_plan(experiment(**{"rollout.limit": None, "curriculum.steps_per_phase": None}),
                          records={"stgr": 6400, "vstar": 2000})
    assert more.prompts_per_phase == 6400 and more.steps_per_phase == 400  # one pass: 6400 / 16
    tp2 = plan.make_plan(experiment(**{"rollout.engine_args": {"tensor_parallel_size": 2}}), records=RECORDS)
    assert tp2.stages["rollout"].gpus_per_job == 2


def test_data_counted_from_files_and_samples(tmp_path):
    ann = tmp_path / "stgr.json"
    ann.write_text(json.dumps([{"id": i} for i in range(37)]))
    cfg = plan.load_config(overrides=["data.synth.enabled=false",
                                      f'data.sources=[{{"format": "stgr", "annotations": "{ann}", "video_root": "{tmp_path}"}}]'])
    d = plan.estimate_data(cfg, plan.Assumptions())
    assert d.train == 37 and "counted" in d.how[0]
    samples = tmp_path / "samples.parquet"
    pq.write_table(pa.table({"split": ["train"] * 5 + ["eval"] * 2, "source": ["stgr"] * 7}), samples)
    assert plan.estimate_data(cfg, plan.Assumptions(), str(samples)).train == 5


def test_job_resources():
    tiny = plan.load_config()
    for rule in ("rollout", "train", "teacher_logits", "evaluate"):
        r = plan.job_resources(tiny, rule)
        assert r["gpu"] == 0 and r["threads"] == 1 and r["nodes"] == 1
    exp = experiment()
    train = plan.job_resources(exp, "train")
    assert (train["nodes"], train["gpu"], train["threads"]) == (2, 8, 64)
    roll = plan.job_resources(exp, "rollout")
    assert (roll["gpu"], roll["threads"], roll["nodes"]) == (1, 8, 1) and roll["runtime"] >= 30
    assert plan.job_resources(exp, "judge")["gpu"] == 0
    one_node = plan.job_resources(experiment(**{"train.prompts_per_step": 8}), "train")
    assert (one_node["nodes"], one_node["gpu"]) == (1, 8)
    four = plan.job_resources(experiment(), "train", plan.Assumptions(gpus_per_node=4))
    assert (four["nodes"], four["gpu"]) == (4, 4)


def test_model_size_from_folder_or_name(tmp_path):
    folder = tmp_path / "Some-Model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 3584, "intermediate_size": 18944,
                                                     "num_hidden_layers": 28, "vocab_size": 152064,
                                                     "num_attention_heads": 28, "num_key_value_heads": 4}))
    b, src = plan.model_params_b(plan.load_config(overrides=[f"model.init={folder}"]))
    assert 7.0 < b < 8.0 and "config.json" in src  # Qwen2.5-7B's language model: 7.6 B
    b, src = plan.model_params_b(plan.load_config(overrides=["model.init=/nowhere/Qwen2.5-VL-72B-Instruct"]))
    assert b == 72 and "name" in src


def test_cli_prints_and_writes_json(capsys):
    parser = argparse.ArgumentParser()
    plan.configure_parser(parser)
    assert plan.main(parser.parse_args(["--configfile", str(EXPERIMENT), "--records", "stgr=20000", "vstar=2000",
                                        "--vary", "rollout.group_size=8"])) == 0
    out = capsys.readouterr().out
    for text in ("rollout", "teacher cache", "GPU-h", "wall time", "rollout.group_size=8"):
        assert text in out
    assert plan.main(parser.parse_args(["--configfile", str(EXPERIMENT), "--records", "stgr=20000", "vstar=2000",
                                        "--json", "--assume", "gpus_per_node=4"])) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["jobs"]["train"] == 4 and d["stages"]["train"]["nodes"] == 4
    assert math.isclose(d["teacher_cache_bytes"], 12800 * 384 * 3 * 46.0)
    assert plan.main(parser.parse_args(["--config", "data.shards=zero"])) == 2  # names the bad key
