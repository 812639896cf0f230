"""visd.report: figures and HTML from small synthetic results folders (every table written here; the R-MSD
pool with the pool stage's own quality / filter / matching functions and schema, the R-MSD rewards with
the Stage-2 reward functions and schema)."""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.unit.test_audit_rmsd import disc_rows, pool_rows
from visd import report as R
from visd import train as T
from visd.io import write_parquet
from visd.judge.record import CATEGORICAL_FIELDS
from visd.rewards import REWARD_TERMS
from visd.rmsd.pool import POOL
from visd.rmsd.stage2 import (
    advantages_by_group,
    d_term,
    mix_reward,
    rmsd_rewards_schema,
)

TASKS = ("mcq", "numeric", "temporal", "spatial")
PHASES = (0, 1, 2)
STEPS = 3  # optimizer steps per phase


def _parquet(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_results(root: Path, recipe: str = "visd", judge: bool = True, evals: bool = True, kl: bool = True,
                 sft: bool = True, seed: int = 0, rmsd: bool = False, teacher_sft: bool = True) -> Path:
    """A results folder with the tables the report reads: 8 samples, 3 phases, 2 shards, G = 4. ``rmsd``
    adds the R-MSD tables (pool, discriminator and SFT metrics; rewards with the R-MSD columns)."""
    rng = np.random.default_rng(seed)
    samples = [{"sample_id": f"s{i}", "split": "train", "task_type": TASKS[i % len(TASKS)]} for i in range(8)]
    _parquet(samples, root / "samples.parquet")
    for p in PHASES:
        for shard in (0, 1):
            rollouts, rewards, verdicts = [], [], []
            for s in samples[shard::2]:
                for g in range(4):
                    rid = f"{s['sample_id']}/p{p}/g{g}"
                    gap = float(rng.uniform(0, 1e-5)) if g else 0.0  # one exact agreement per group
                    rollouts.append({"rollout_id": rid, "sample_id": s["sample_id"], "phase": p, "engine": "hf",
                                     "completion_ids": [1, 2, 3], "trainer_logprob_gap_max": gap,
                                     "trainer_logprob_gap_mean": gap / 3})
                    terms = {t: float(np.clip(rng.normal(0.3 + 0.1 * p, 0.2), 0, 1)) for t in REWARD_TERMS}
                    rewards.append({"rollout_id": rid, "sample_id": s["sample_id"], "group": s["sample_id"],
                                    "phase": p, **terms, "total": sum(terms.values()), "advantage": 0.0})
                    if rmsd:  # as visd.rmsd.stage2.run: R = α·σ(D) + β·R_outer + η·R_task + δ·R_content
                        score = float(rng.normal(-1.0 + 0.5 * p, 0.8))
                        ro = float(rng.random() < 0.6 + 0.15 * p)
                        rt = ro * float(rng.random() < 0.8)
                        iou = s["task_type"] in ("temporal", "spatial")
                        rc = rt * float(rng.uniform(0.2, 1.0) if iou else rng.random() < 0.5)
                        m = None if s["sample_id"] == "s0" else int(rng.integers(0, 4))  # s0: a fallback input
                        rewards[-1].update(progress=p / len(PHASES), d_score=score, d_term=d_term(score), r_outer=ro,
                                           r_task=rt, r_content=rc, total=mix_reward(d_term(score), ro, rt, rc),
                                           matched_index=m, matched_quality=None if m is None else 0.8,
                                           fallback="no_kept_response" if m is None else None, discriminator="d")
                    verdicts.append({"rollout_id": rid, "sample_id": s["sample_id"], "judge_name": "rules",
                                     **{f: str(rng.choice(cats)) for f, cats in CATEGORICAL_FIELDS.items()}})
            _parquet(rollouts, root / "rollouts" / f"phase-{p}" / f"shard-{shard}.parquet")
            if rmsd:
                advantages_by_group(rewards)
                write_parquet(pa.Table.from_pylist(rewards, schema=rmsd_rewards_schema()),
                              root / "rewards" / f"phase-{p}" / f"shard-{shard}.parquet")
            else:
                _parquet(rewards, root / "rewards" / f"phase-{p}" / f"shard-{shard}.parquet")
            if judge:
                _parquet(verdicts, root / "judge" / f"phase-{p}" / f"shard-{shard}.parquet")
        rows = []
        for k in range(STEPS):
            s = p * STEPS + k + 1
            lam = max(0.0, 0.5 * (12 - (s - 1)) / 12) if recipe == "visd" else 0.0
            omega = 1 + lam * np.clip(rng.normal(0, 0.15, 400), -0.2, 0.2) if lam else np.ones(400)
            hist = T.omega_histogram(torch.tensor(omega), torch.ones(len(omega), dtype=torch.bool)).tolist()
            rows.append({"phase": p, "step": k + 1, "global_step": s, "recipe": recipe, "loss": float(rng.normal()),
                         "pg_loss": float(rng.normal()), "jsd_loss": None, "kl": None, "lambda": lam,
                         "omega_mean": float(omega.mean()), "omega_min": float(omega.min()),
                         "omega_max": float(omega.max()), "omega_frac_changed": float(np.mean(omega != 1)),
                         "omega_hist": hist, "grad_norm": float(rng.uniform(0.1, 2)), "ratio_mean": 1.0,
                         "ratio_min": 0.9, "ratio_max": 1.1, "ratio_clip_frac": 0.05, "reward_mean": 1.5 + 0.1 * p,
                         "advantage_abs_mean": 0.7, "lr": 5e-4 * (1 - s / 10)})
        _parquet(rows, root / "metrics" / f"phase-{p}.parquet")
    if sft:
        _parquet([{"step": i + 1, "loss": 6 * 0.99 ** i, "lr": 2e-3, "grad_norm": 1.0} for i in range(100)],
                 root / "metrics" / "sft.parquet")
    if evals:
        for p in (-1, *PHASES):
            where = "start" if p < 0 else f"phase-{p}"
            step = None if p < 0 else (p + 1) * STEPS  # the start policy may have no trainer step
            _json({"benchmark": "synth", "kind": "synth", "phase": p, "step": step, "policy_hash": "abc",
                   "n_items": 24, "metrics": {"accuracy": 30.0 + 5 * (p + 1), "tIoU": 20.0 + 3 * (p + 1),
                                              "score/mcq": 25.0 + p, "mcq/n_items": 11.0, "vstar/AP@0.5_1": 0.0,
                                              "vstar/short/mAM": 3.0, "vstar/acc_is_llm_judge": 0.0}},
                  root / "eval" / where / "synth.json")
            _json({"benchmark": "vstar", "kind": "vstar", "phase": p, "step": step, "policy_hash": "abc",
                   "n_items": 10, "metrics": {"Acc": 40.0 + p, "mAM": 10.0 + p, "mLGM": 5.0 + p}},
                  root / "eval" / where / "vstar.json")
    if rmsd:
        pool = pool_rows(seed=seed, inputs_per_task=6)
        ids = sorted({r["sample_id"] for r in pool})
        for shard in (0, 1):
            mine = [r for r in pool if ids.index(r["sample_id"]) % 2 == shard]
            write_parquet(pa.Table.from_pylist(mine, schema=POOL), root / "rmsd" / "pool" / f"shard-{shard}.parquet")
        for name, rows in disc_rows(steps=(12, 6, 6, 6)).items():
            write_parquet(pa.Table.from_pylist(rows), root / "metrics" / f"rmsd-discriminator-{name}.parquet")
        # Stage 1 (visd.rmsd.stage1 rows) and the teacher's SFT (visd.sft rows)
        _parquet([{"step": i + 1, "loss": 1.9 * 0.8 ** i, "lr": 1e-4, "grad_norm": 1.0, "examples": 16,
                   "elapsed_s": 1.0 + i} for i in range(3)], root / "metrics" / "rmsd-sft.parquet")
        if teacher_sft:
            _parquet([{"step": i + 1, "loss": 7 * 0.995 ** i + float(rng.uniform(0, 0.2)), "lr": 5e-4 * (1 - i / 800),
                       "grad_norm": 1.0, "teacher_view": 8, "tokens": 900, "tokens_per_s": 5e3, "elapsed_s": 0.1 * i}
                      for i in range(800)], root / "metrics" / "rmsd-teacher-sft.parquet")
    if kl:
        # as `visd kl-gap` writes them: "phase" is the CLI string ("start", "0", ...)
        _json({"phase": "start", "kl": 0.8, "margin_mean": 1.2, "n_samples": 6}, root / "diagnostics/kl_gap/start.json")
        for p in PHASES:
            k = 0.8 - 0.2 * (p + 1)
            _json({"phase": str(p), "kl": k, "kl_start": 0.8, "gap_closed": 1 - k / 0.8, "margin_mean": 1.2 - 0.3 * p,
                   "n_samples": 6}, root / "diagnostics" / "kl_gap" / f"phase-{p}.json")
    return root


def check_png(path: Path) -> None:
    from PIL import Image

    assert path.exists() and path.stat().st_size > 2000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        a = np.asarray(im.convert("L"))
        assert im.width >= 300 and im.height >= 100, (path, im.size)
        assert a.std() > 5, f"{path} looks blank"


def img_refs(page: Path) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', page.read_text()))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A full VISD results folder and its report (drawn once for the module: matplotlib is slow on 2 cores)."""
    root = tmp_path_factory.mktemp("full")
    res = make_results(root / "results")
    return res, R.run({"visd": str(res)}, str(root / "report"))


def test_every_figure_of_a_full_run(full):
    res, out = full
    report_dir = Path(out["html"]).parent
    drawn = set(R.SINGLE_RUN) - set(R.RMSD_FIGURES)
    assert set(out["skipped"]) == set(R.RMSD_FIGURES)  # a VISD run has no R-MSD tables
    assert "rmsd_pool" in out["skipped"]["rmsd_pool_quality"]
    assert "not an R-MSD run" in out["skipped"]["rmsd_reward_terms"]
    assert set(out["figures"]) == drawn
    for name in R.SINGLE_RUN:  # drawn or placeholder
        check_png(report_dir / f"{name}.png")
    page = Path(out["html"])
    assert page.name == "index.html"
    assert img_refs(page) == {f"{n}.png" for n in drawn}  # relative references only
    text = page.read_text()
    assert "R-MSD" not in text.split("<h2>Not drawn</h2>")[0]  # no R-MSD rows in the table of a VISD run
    for caption_start in (R.FIGURES["omega_hist"][1][:30], R.FIGURES["judge_fields"][1][:30]):
        assert caption_start in text
    # final-metrics table: rewards, judge, eval and KL-gap summaries of the run
    assert "reward total (P0 → P2)" in text and "eval synth: accuracy (start → P2)" in text
    assert "30.0 → 45.0" in text and "KL gap closed (after P2)" in text and "judge: answer correct" in text
    # eval table: headline metrics only; counts, flags, thresholds and breakdowns stay in the JSON
    assert "eval vstar: mAM (start → P2)" in text and "score/mcq" not in text and "AP@" not in text
    assert set(R._eval_points(R.Run("x", res))["synth"]) == {"accuracy", "tIoU", "score/mcq"}
    assert not list(report_dir.glob(".*tmp*"))  # atomic writes leave no temporary files
    assert (page.stat().st_mode & 0o044) == 0o044  # readable by others (the temporary file was 0600)


def test_missing_tables_are_listed_and_get_placeholders(tmp_path):
    res = make_results(tmp_path / "grpo", recipe="grpo", judge=False, evals=False, kl=False, sft=False)
    names = ["omega_hist", "judge_fields", "eval_metrics", "kl_gap", "sft_loss"]
    out = R.run({"grpo": str(res)}, str(tmp_path / "report"), figures=names)
    assert set(out["skipped"]) == {"judge_fields", "eval_metrics", "kl_gap", "sft_loss"}
    assert "judge" in out["skipped"]["judge_fields"] and "eval/start" in out["skipped"]["eval_metrics"]
    assert set(out["figures"]) == {"omega_hist"}  # GRPO: ω ≡ 1, drawn as one bin with a note
    for name in names:  # drawn or placeholder: the file set is stable
        check_png(tmp_path / "report" / f"{name}.png")
    page = Path(out["html"])
    assert img_refs(page) == {"omega_hist.png"}
    text = page.read_text()
    assert "Not drawn" in text
    for name in out["skipped"]:
        assert f"<code>{name}.png</code>" in text
    with pytest.raises(ValueError, match="unknown figure"):
        R.run({"grpo": str(res)}, str(tmp_path / "report"), figures=["nope"])


def test_a_folder_without_tables_still_gets_a_page(tmp_path):
    (tmp_path / "empty").mkdir()
    out = R.run({"empty": str(tmp_path / "empty")}, str(tmp_path / "report"), placeholders=False)
    assert out["figures"] == {} and set(out["skipped"]) == set(R.SINGLE_RUN)
    assert img_refs(Path(out["html"])) == set()
    assert not list((tmp_path / "report").glob("*.png"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.run({"x": str(tmp_path / "nowhere")}, str(tmp_path / "r2"))


def test_method_comparison_and_stale_comparisons_removed(full, tmp_path):
    a = full[0]
    b = make_results(tmp_path / "grpo", recipe="grpo", judge=False, kl=False, seed=2)
    c = make_results(tmp_path / "opsd", recipe="opsd", judge=False, evals=False, kl=False, seed=3)
    out = R.run({"visd": str(a), "grpo": str(b), "opsd": str(c)}, str(tmp_path / "report"), figures=R.COMPARISON)
    assert set(out["figures"]) == set(R.COMPARISON)
    for name in R.COMPARISON:
        check_png(tmp_path / "report" / f"{name}.png")
    text = Path(out["html"]).read_text()
    for label in ("visd", "grpo", "opsd"):
        assert f"<th>{label}</th>" in text
    assert img_refs(Path(out["html"])) == {"compare_reward.png", "compare_eval.png"}
    # a later single-run report into the same folder drops the comparison figures
    R.run({"visd": str(a)}, str(tmp_path / "report"), figures=["kl_gap"])
    assert not (tmp_path / "report" / "compare_reward.png").exists()
    # only one run with eval summaries: compare_eval is not drawn (and no placeholder)
    out = R.run({"visd": str(a), "opsd": str(c)}, str(tmp_path / "report2"), figures=R.COMPARISON)
    assert "compare_eval" in out["skipped"] and "compare_reward" in out["figures"]
    assert not (tmp_path / "report2" / "compare_eval.png").exists()


@pytest.fixture(scope="module")
def rmsd_run(tmp_path_factory):
    """An R-MSD results folder (GRPO loss on the R-MSD rewards) and its R-MSD figures."""
    root = tmp_path_factory.mktemp("rmsd")
    res = make_results(root / "results", recipe="grpo", judge=False, evals=False, kl=False, sft=False, rmsd=True)
    return res, R.run({"rmsd": str(res)}, str(root / "report"), figures=[*R.RMSD_FIGURES, "reward_terms"])


def test_rmsd_figures_and_summary(rmsd_run):
    from PIL import Image

    res, out = rmsd_run
    report_dir = Path(out["html"]).parent
    assert out["skipped"] == {}
    assert set(out["figures"]) == {*R.RMSD_FIGURES, "reward_terms"}
    for name in R.RMSD_FIGURES:
        check_png(report_dir / f"{name}.png")
        with Image.open(report_dir / f"{name}.png") as im:
            assert im.width >= 800 and im.height >= 300, (name, im.size)  # a figure, not a placeholder
    text = Path(out["html"]).read_text()
    assert img_refs(Path(out["html"])) == {f"{n}.png" for n in (*R.RMSD_FIGURES, "reward_terms")}
    assert R.FIGURES["rmsd_discriminator"][1][:40] in text
    # the final-metrics table, against values computed here from the same tables
    pool = pq.read_table(res / "rmsd" / "pool").to_pylist()
    kept = sum(r["kept"] for r in pool)
    inputs = {r["sample_id"] for r in pool}
    with_kept = {r["sample_id"] for r in pool if r["kept"]}
    assert f"R-MSD teacher pool kept at τ = 0.3</th><td>{kept / len(pool):.0%} of {len(pool)} responses; " \
           f"{len(with_kept)}/{len(inputs)} inputs keep one" in text
    disc = [r for rows in disc_rows(steps=(12, 6, 6, 6)).values() for r in rows]
    acc = f"{disc[0]['pair_accuracy']:.2f} → {disc[-1]['pair_accuracy']:.2f}"
    assert f"discriminator pair accuracy (first → last step)</th><td>{acc}" in text
    assert "R-MSD Stage-1 SFT loss (first → last step)</th><td>1.900 → 1.216" in text
    assert "R-MSD teacher SFT loss (first → last step)" in text
    assert R._label_of(str(res)) == "rmsd"  # not the recipe of its metrics (grpo: R-MSD's policy loss)


def test_rmsd_reward_terms_are_the_stage2_means(rmsd_run):
    """The means drawn per phase (Run.sql over the rewards view) equal plain-Python means of the tables."""
    res, _ = rmsd_run
    run = R.Run("rmsd", res)
    rows = [r for p in sorted((res / "rewards").glob("phase-*/shard-*.parquet")) for r in pq.read_table(p).to_pylist()]
    for r in rows:  # the table is what the trainer reads: R is the R-MSD mix
        assert r["total"] == pytest.approx(0.4 * r["d_term"] + 0.1 * r["r_outer"] + 0.1 * r["r_task"]
                                           + 0.4 * r["r_content"], abs=1e-12)
    got = run.sql("rewards", "SELECT phase, avg(d_term), avg(r_content), avg(total) FROM rewards GROUP BY 1 ORDER BY 1")
    for p, d, c, t in got:
        mine = [r for r in rows if r["phase"] == p]
        want = [sum(r[k] for r in mine) / len(mine) for k in ("d_term", "r_content", "total")]
        assert (d, c, t) == pytest.approx(tuple(want), abs=1e-12)


def test_rmsd_partial_tables(tmp_path):
    """An external teacher (no teacher SFT metrics) still gets the Stage-1 panel; discriminator tables without
    steps (no pairs: the stage writes only a phase column) are listed as not drawn, with a placeholder."""
    res = make_results(tmp_path / "results", recipe="grpo", judge=False, evals=False, kl=False, sft=False, rmsd=True,
                       teacher_sft=False)
    for p in (res / "metrics").glob("rmsd-discriminator-*.parquet"):
        p.unlink()
    write_parquet(pa.table({"phase": pa.array([], pa.int64())}), res / "metrics" / "rmsd-discriminator-warmup.parquet")
    out = R.run({"rmsd": str(res)}, str(tmp_path / "report"), figures=["rmsd_sft_loss", "rmsd_discriminator"])
    assert set(out["figures"]) == {"rmsd_sft_loss"}
    assert "no steps" in out["skipped"]["rmsd_discriminator"]
    for name in ("rmsd_sft_loss", "rmsd_discriminator"):
        check_png(tmp_path / "report" / f"{name}.png")
    assert "R-MSD teacher SFT loss" not in Path(out["html"]).read_text()


def _cli(argv):
    p = argparse.ArgumentParser(prog="visd report")
    R.configure_parser(p)
    return R.main(p.parse_args(argv))


def test_cli(full, tmp_path, capsys):
    a = full[0]
    b = make_results(tmp_path / "results-grpo", recipe="grpo", judge=False, seed=4)
    assert _cli(["--results", str(a), "--compare", f"grpo={b}", "--out", str(tmp_path / "rep"),
                 "--only", "compare_reward", "lambda"]) == 0
    text = (tmp_path / "rep" / "index.html").read_text()
    assert "<th>visd</th>" in text and "<th>grpo</th>" in text  # default label: the recipe of the metrics
    assert (tmp_path / "rep" / "compare_reward.png").exists() and (tmp_path / "rep" / "lambda.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(["--results", str(empty)]) == 0 and (empty / "report" / "index.html").exists()  # default --out
    assert "<th>empty</th>" in (empty / "report" / "index.html").read_text()  # no metrics: the folder name
    assert _cli(["--results", str(a), "--compare", "grpo"]) == 2
    assert _cli(["--results", str(a), "--compare", f"visd={b}"]) == 2  # label used twice
    assert _cli(["--results", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    p = argparse.ArgumentParser(prog="visd report")
    R.configure_parser(p)
    helptext = p.format_help()
    assert "--compare LABEL=DIR" in helptext and "omega_hist" in helptext


def test_trainer_omega_histogram_bins():
    """The trainer's per-step histogram (metrics column omega_hist) over OMEGA_HIST_EDGES."""
    edges = np.asarray(T.OMEGA_HIST_EDGES)
    assert len(edges) == 201 and edges[0] == 0.5 and edges[-1] == 1.5
    omega = torch.tensor([[0.2, 0.9, 1.0, 1.0, 1.1, 7.0], [0.95, 1.5, 1.2, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    h = T.omega_histogram(omega, mask)
    assert h.shape == (202,) and h.sum() == 9
    assert h[0] == 1 and h[-1] == 2  # ω < 0.5; ω ≥ 1.5 (1.5 itself and 7.0)
    vals = omega[mask].numpy()
    inner = vals[(vals >= 0.5) & (vals < 1.5)]
    idx = np.searchsorted(edges.astype(np.float32), inner.astype(np.float32), side="right")
    assert h[1:-1].sum() == len(inner) and all(h[i] >= 1 for i in idx)
    assert h[np.searchsorted(edges, 1.0, side="right")] == 2  # ω = 1 exactly -> bin [1.0, 1.005)
    assert T.omega_histogram(omega, torch.zeros_like(mask)).sum() == 0
    assert "omega_hist" in T.METRIC_COLUMNS
