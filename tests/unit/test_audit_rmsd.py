"""visd audit over the R-MSD tables: the teacher pool (written with the pool stage's own quality, filter and
matching functions and its schema) and the discriminator metrics (the rows ``train_epochs`` writes). The
named queries run through DuckDB and are checked against plain-Python values computed from the same rows."""

import argparse
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from visd import audit
from visd.io import write_parquet
from visd.rmsd.pool import FALLBACK_NO_KEPT, POOL, filter_and_match
from visd.rmsd.quality import is_closed, quality

TAU, K = 0.3, 4


def out(answer, think="I look at the frames."):
    return f"<think>{think}</think><answer>{answer}</answer>"


def kf(t, *objs):
    return {"time": t, "objects": [{"name": n, "box": b} for n, b in objs]}


# One sample per task type and the teacher responses drawn for it (q from 0 to 1; 0.5 sits exactly on τ = 0.5).
SAMPLES = {
    "mcq": ({"task_type": "mcq", "answer": "B", "question": "Which colour?", "options": ["A. red", "B. blue"]},
            [out("B"), out("A"), "B", out("(B)")]),
    "numeric": ({"task_type": "numeric", "answer": "20", "question": "How many?"},
                [out("21"), out("25"), out("20"), "<answer>20"]),
    "temporal": ({"task_type": "temporal", "answer": "From 1 to 3", "answer_window": [1.0, 3.0], "question": "When?"},
                 [out("From <t>2.0</t>s to <t>4.0</t>s"), out("From <t>1.0</t>s to <t>3.0</t>s"),
                  out("From <t>1.0</t>s to <t>2.0</t>s"), out("From <t>2.5</t>s to <t>5.0</t>s")]),
    "spatial": ({"task_type": "spatial", "answer": "[0,0,10,10]", "question": "Where is the red circle?",
                 "key_frames": [kf(1.0, ("red circle", [0, 0, 10, 10]))]},
                [out("[5,0,15,10]"), out("[0,0,10,10]"), out("[0,0,5,10]"), out("[8,0,18,10]")]),
    "open": ({"task_type": "open", "answer": "red, blue", "question": "Which colours appear?"},
             [out("green"), "no tags at all", out("red and blue"), out("blue")]),
}


def pool_rows(seed: int = 0, inputs_per_task: int = 3) -> list[dict]:
    """Rows as ``visd.rmsd.pool.run`` builds them: quality → filter_and_match, one input at a time. Each input
    draws K responses from its task's list; the last input of every closed task gets only q < τ responses."""
    rng = np.random.default_rng(seed)
    rows = []
    for tt, (sample, texts) in SAMPLES.items():
        qs = [quality(t, sample)["q"] for t in texts]
        for j in range(inputs_per_task):
            sid = f"{tt}-{j}"
            if j == inputs_per_task - 1 and is_closed(tt):
                choice = [i for i, q in enumerate(qs) if q < TAU] * K  # all fail: fallback
                choice = choice[:K]
            else:
                choice = rng.integers(0, len(texts), K).tolist()
            scored = []
            for k, i in enumerate(choice):
                qd = quality(texts[i], {**sample, "sample_id": sid})
                scored.append({"sample_id": sid, "task_type": tt, "teacher_id": "teacher:abc", "sample_index": k,
                               "response": texts[i], "n_tokens": len(texts[i]) // 3,
                               "finish_reason": "stop" if texts[i].endswith("</answer>") else "length",
                               "valid": qd["valid"], "metric": qd["metric"], "metric_value": qd["metric_value"],
                               "quality": qd["q"], "closed": is_closed(tt), "tau": TAU, "k": K, "weighting": True,
                               "params_hash": "p"})
            rows += filter_and_match(scored, TAU, True)
    return rows


def disc_rows(steps=(5, 3, 4)) -> dict[str, list[dict]]:
    """Per-step rows as ``visd.rmsd.discriminator.train_epochs`` writes them: ``steps[0]`` warm-up steps (phase
    0), then ``steps[1 + P]`` online steps of phase P continuing the step count. (In the fixture phase 2 had no
    pairs: the stage then writes a table with only ``phase``.)"""
    rng = np.random.default_rng(1)
    tables, step = {}, 0
    segments = [("warmup", 0, "warmup", steps[0])] + [(f"phase-{p}", p, "online", n) for p, n in enumerate(steps[1:])]
    for name, phase, kind, n in segments:
        rows = []
        for _ in range(n):
            step += 1
            dt, ds = float(rng.normal(0.1 * step, 0.2)), float(rng.normal(-0.05 * step, 0.2))
            rows.append({"phase": phase, "kind": kind, "step": step, "loss": float(math.log1p(math.exp(ds - dt))),
                         "d_teacher_mean": dt, "d_student_mean": ds, "pair_accuracy": float(rng.integers(0, 17)) / 16,
                         "q_mean": float(rng.uniform(0.3, 1)), "grad_norm": float(rng.uniform(0.1, 2)), "pairs": 16,
                         "elapsed_s": 0.1 * step})
        tables[name] = rows
    return tables


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("rmsd") / "results"
    rows = pool_rows()
    ids = sorted({r["sample_id"] for r in rows})
    for shard in (0, 1):  # inputs split across two shards, as the workflow does
        mine = [r for r in rows if ids.index(r["sample_id"]) % 2 == shard]
        write_parquet(pa.Table.from_pylist(mine, schema=POOL), root / "rmsd" / "pool" / f"shard-{shard}.parquet")
    disc = disc_rows()
    for name, drows in disc.items():
        write_parquet(pa.Table.from_pylist(drows), root / "metrics" / f"rmsd-discriminator-{name}.parquet")
    empty = pa.table({"phase": pa.array([], pa.int64())})  # what the stage writes for a phase without pairs
    write_parquet(empty, root / "metrics" / "rmsd-discriminator-phase-2.parquet")
    write_parquet(pa.Table.from_pylist([{"sample_id": i, "split": "train", "task_type": i.split("-")[0]} for i in ids]),
                  root / "samples.parquet")
    return root, rows, disc


def query(root, name) -> list[dict]:
    con, _ = audit.connect(root)
    rel = con.sql(audit.QUERIES[name][1])
    return [dict(zip(rel.columns, r)) for r in rel.fetchall()]


def quantile(xs, p):
    """Linear interpolation between order statistics (numpy's default, DuckDB's quantile_cont)."""
    xs = sorted(xs)
    h = (len(xs) - 1) * p
    lo = math.floor(h)
    return xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])


def by_task(rows):
    out = {}
    for r in rows:
        out.setdefault(r["task_type"], []).append(r)
    return {**out, "all": rows}


def test_views_found(results):
    root, rows, _ = results
    con, found = audit.connect(root)
    assert {"rmsd_pool", "rmsd_discriminator", "samples"} <= set(found)
    assert con.sql("SELECT count(*) FROM rmsd_pool").fetchall()[0][0] == len(rows) == 5 * 3 * K
    assert con.sql("SELECT count(DISTINCT shard) FROM rmsd_pool").fetchall()[0][0] == 2
    # the stored phase (0 for the warm-up) wins over the path's; the empty phase-2 table adds no rows
    kinds = con.sql("SELECT kind, phase, count(*) FROM rmsd_discriminator WHERE step IS NOT NULL "
                    "GROUP BY ALL ORDER BY ALL").fetchall()
    assert kinds == [("online", 0, 3), ("online", 1, 4), ("warmup", 0, 5)]


def test_teacher_quality_by_task(results):
    root, rows, _ = results
    got = {r["task_type"]: r for r in query(root, "rmsd_teacher_quality")}
    groups = by_task(rows)
    assert set(got) == set(groups)
    assert list(got)[-1] == "all"  # the total row comes last
    for tt, rs in groups.items():
        g = got[tt]
        q = [r["quality"] for r in rs]
        assert g["responses"] == len(rs) and g["inputs"] == len({r["sample_id"] for r in rs})
        assert g["metric"] == (rs[0]["metric"] if tt != "all" else "all")
        want = {"valid_rate": sum(r["valid"] for r in rs) / len(rs), "q_mean": sum(q) / len(q), "q_min": min(q),
                "truncated_rate": sum(r["finish_reason"] == "length" for r in rs) / len(rs),
                "q_p25": quantile(q, 0.25), "q_median": quantile(q, 0.5), "q_p75": quantile(q, 0.75), "q_max": max(q),
                "metric_mean": sum(r["metric_value"] for r in rs) / len(rs),
                "kept_ratio": sum(r["quality"] >= TAU for r in rs) / len(rs)}
        for k, v in want.items():
            assert g[k] == pytest.approx(v, abs=5.1e-5), (tt, k)
        fell = {r["sample_id"] for r in rs if r["fallback"] == FALLBACK_NO_KEPT}
        assert g["fallback_inputs"] == len(fell)
        assert g["tau"] == TAU and g["k"] == K
    assert got["mcq"]["metric"] == "exact_match" and got["spatial"]["metric"] == "box_iou"
    assert got["all"]["fallback_inputs"] == 4  # the all-fail input of each closed task
    assert got["open"]["fallback_inputs"] == 0
    assert got["all"]["truncated_rate"] > 0  # "B" and "<answer>20" stand for responses cut at max_new_tokens


def test_kept_ratio_by_tau_grid_and_the_runs_own_tau(results):
    root, rows, _ = results
    got = query(root, "rmsd_kept_by_tau")
    groups = by_task(rows)
    grid = {(r["task_type"], r["tau"]): r for r in got if r["source"] == "q >= tau"}
    run = {r["task_type"]: r for r in got if r["source"] == "run (kept flag)"}
    assert sorted({t for _, t in grid}) == [0.0, 0.2, 0.3, 0.5] and set(run) == set(groups)
    assert len(got) == len(groups) * 5
    for tt, rs in groups.items():
        inputs: dict[str, list[float]] = {}
        for r in rs:
            inputs.setdefault(r["sample_id"], []).append(r["quality"])
        for tau in (0.0, 0.2, 0.3, 0.5):
            g = grid[(tt, tau)]
            kept = sum(q >= tau for q in (r["quality"] for r in rs))
            with_kept = sum(any(q >= tau for q in qs) for qs in inputs.values())
            got_n = (g["inputs"], g["responses"], g["kept"], g["inputs_with_kept"])
            assert got_n == (len(inputs), len(rs), kept, with_kept)
            assert g["kept_ratio"] == pytest.approx(kept / len(rs), abs=5.1e-5)
            assert g["inputs_with_kept_ratio"] == pytest.approx(with_kept / len(inputs), abs=5.1e-5)
        r0 = run[tt]  # the stored flags of the run's τ = 0.3 agree with the recomputed q ≥ 0.3
        assert r0["tau"] == TAU
        flagged = sum(any(r["kept"] for r in rs if r["sample_id"] == s) for s in inputs)
        assert (r0["kept"], r0["inputs_with_kept"]) == (sum(r["kept"] for r in rs), flagged)
        assert (r0["kept"], r0["inputs_with_kept"]) == (grid[(tt, TAU)]["kept"], grid[(tt, TAU)]["inputs_with_kept"])
    # τ = 0 keeps everything; q = 0.5 exactly (half-overlapping window and box) is kept at τ = 0.5
    assert all(grid[(tt, 0.0)]["kept_ratio"] == 1.0 for tt in groups)
    half = [r for r in rows if r["quality"] == 0.5]
    assert half and grid[("all", 0.5)]["kept"] == sum(r["quality"] >= 0.5 for r in rows) >= len(half)
    # the all-fail inputs of closed tasks keep nothing at the run's τ
    assert run["mcq"]["inputs_with_kept"] == run["mcq"]["inputs"] - 1


def test_discriminator_steps_ordered(results):
    root, _, disc = results
    got = query(root, "rmsd_discriminator_steps")
    want = [r for name in ("warmup", "phase-0", "phase-1") for r in disc[name]]
    assert [(r["phase"], r["kind"], r["step"]) for r in got] == [(r["phase"], r["kind"], r["step"]) for r in want]
    assert [r["step"] for r in got] == list(range(1, len(want) + 1))
    for g, w in zip(got, want):
        assert g["d_teacher"] == pytest.approx(w["d_teacher_mean"], abs=5.1e-5)
        assert g["d_student"] == pytest.approx(w["d_student_mean"], abs=5.1e-5)
        assert g["gap"] == pytest.approx(w["d_teacher_mean"] - w["d_student_mean"], abs=5.1e-5)
        assert g["pair_accuracy"] == pytest.approx(w["pair_accuracy"], abs=5.1e-5)
        assert g["loss"] == pytest.approx(w["loss"], abs=5.1e-5)


def _cli(argv):
    p = argparse.ArgumentParser(prog="visd audit")
    audit.configure_parser(p)
    return audit.main(p.parse_args(argv))


def test_cli_lists_and_runs_the_rmsd_queries(results, capsys):
    root, rows, _ = results
    assert _cli(["--results", str(root), "--list"]) == 0
    text = capsys.readouterr().out
    assert "rmsd_pool" in text and "rmsd_discriminator" in text
    for name in ("rmsd_teacher_quality", "rmsd_kept_by_tau", "rmsd_discriminator_steps"):
        assert f"--query {name}" in text
    assert _cli(["--results", str(root), "--query", "rmsd_kept_by_tau", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    total = next(r for r in got if r["task_type"] == "all" and r["source"] == "run (kept flag)")
    assert total["kept"] == sum(r["kept"] for r in rows)


def test_run_without_rmsd_tables(tmp_path, capsys):
    """A VISD / GRPO run has no R-MSD tables: no views, and the R-MSD queries fail naming what is absent."""
    root = tmp_path / "results"
    write_parquet(pa.Table.from_pylist([{"sample_id": "a", "split": "train", "task_type": "mcq"}]),
                  root / "samples.parquet")
    write_parquet(pa.Table.from_pylist([{"phase": 0, "global_step": 1, "loss": 0.5}]),
                  root / "metrics" / "phase-0.parquet")
    _, found = audit.connect(root)
    assert found == ["samples", "metrics"]
    for name in ("rmsd_teacher_quality", "rmsd_kept_by_tau", "rmsd_discriminator_steps"):
        assert _cli(["--results", str(root), "--query", name]) == 2
        err = capsys.readouterr().err
        assert "rmsd_" in err and "R-MSD recipe" in err and "views available" in err
