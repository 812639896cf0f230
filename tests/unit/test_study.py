"""Convergence study: recipe configs, steps-to-target arithmetic, table and plot."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest

from tests.conftest import visd_bin
from visd import study


def curve(*pts):
    return [{"phase": i, "step": s, "score": v} for i, (s, v) in enumerate(pts)]


RUNS = {
    "grpo": {0: curve((2, 10.0), (4, 30.0), (6, 20.0)), 1: curve((2, 12.0), (4, 14.0), (6, 16.0))},
    "visd": {0: curve((2, 31.0), (4, 20.0), (6, 40.0)), 1: curve((2, 5.0), (4, 6.0), (6, 7.0))},
}


def test_steps_to_reach_and_mean_curve():
    assert study.steps_to_reach(RUNS["visd"][0], 30.0) == 2
    assert study.steps_to_reach(RUNS["grpo"][0], 30.0) == 4
    assert study.steps_to_reach(RUNS["visd"][1], 16.0) is None
    assert study.steps_to_reach(curve((2, 29.999999999999996)), 30.0) == 2  # float round-off is not a miss
    m = study.mean_curve([RUNS["grpo"][0], RUNS["grpo"][1]])
    assert m == [{"step": 2, "score": 11.0, "min": 10.0, "max": 12.0},
                 {"step": 4, "score": 22.0, "min": 14.0, "max": 30.0},
                 {"step": 6, "score": 18.0, "min": 16.0, "max": 20.0}]


def test_summarize_by_hand():
    s = study.summarize(RUNS, start_score=5.0)
    per = {(r["method"], r["seed"]): r for r in s["per_seed"]}
    # seed 0: GRPO's best is 30 (step 4); VISD reaches 31 at step 2
    assert per[("grpo", 0)]["target"] == 30.0 and per[("grpo", 0)]["steps_to_target"] == 4
    assert per[("visd", 0)]["steps_to_target"] == 2
    # seed 1: GRPO's best is 16 (step 6); VISD never reaches it
    assert per[("grpo", 1)]["steps_to_target"] == 6 and per[("visd", 1)]["steps_to_target"] is None
    mean = {r["method"]: r for r in s["mean"]}
    # seed means: grpo 11, 22, 18 → target 22 at step 4; visd 18, 13, 23.5 → first ≥ 22 at step 6
    assert mean["grpo"]["target"] == 22.0 and mean["grpo"]["steps_to_target"] == 4
    assert mean["visd"]["steps_to_target"] == 6 and mean["visd"]["seeds_reaching"] == 1
    with pytest.raises(ValueError, match="baseline method 'opsd'"):
        study.summarize(RUNS, None, baseline="opsd")


def test_method_config_merges_the_recipe(tmp_path):
    base = {"train": {"lr": 1e-3, "recipe": "visd"}, "seed": 0}
    cfg = study.method_config(base, "grpo", 2)
    assert cfg["train"]["recipe"] == "grpo" and cfg["train"]["lam0"] == 0.0 and cfg["train"]["lr"] == 1e-3
    assert cfg["seed"] == 2 and cfg["study"]["baseline"] == "grpo"
    with pytest.raises(Exception, match="has no recipe file"):
        study.method_config(base, "nope", 0)


def test_summarize_cli_writes_table_plot_and_json(tmp_path):
    runs = []
    for method, seeds in RUNS.items():
        for seed, c in seeds.items():
            p = tmp_path / f"{method}-{seed}.json"
            p.write_text(json.dumps({"method": method, "seed": seed, "curve": c}))
            runs.append(str(p))
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"metrics": {"score": 5.0}}))
    out = tmp_path / "out"
    subprocess.run([visd_bin(), "study", "summarize", "--runs", *runs, "--start-eval", str(start),
                    "--csv", str(out / "t.csv"), "--json", str(out / "s.json"), "--png", str(out / "c.png")],
                   check=True, capture_output=True)
    rows = list(csv.DictReader(open(out / "t.csv")))
    assert {"method": "visd", "seed": "mean", "target": "22.0", "best": "23.5", "steps_to_target": "6"} in rows
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "s.json").read_text())["start_score"] == 5.0
