"""``visd report``: PNG figures and a self-contained HTML page for one run or a comparison of runs.

Reads only what the stages wrote under a results folder (tables are found like :mod:`visd.audit` does)
and draws one PNG per figure with a stable name, plus ``index.html`` that references them relatively:

======================  ====================================================================================
``reward_terms``        mean of every reward term (R1–R7), the total and ``total_p0`` (the total with R5 at σ = 4,
                       comparable across phases) over each phase's rollouts (± s.e.m.)
``reward_by_task``      mean total reward per task type and phase
``lambda``              λ(s) and the learning rate per optimizer step
``train_losses``        loss terms, gradient norm, PPO ratio range and clip fraction per optimizer step
``omega_hist``          ω histogram per phase (trainer column ``omega_hist``) and ω min / mean / max per step
``judge_fields``        share of each category of the judge's four categorical fields, per phase
``logprob_gap``         engine vs trainer log-probability gap of the sampled tokens, per phase (log scale)
``eval_metrics``        every benchmark metric (percent) at the start policy and after each phase
``kl_gap``              teacher–student KL of the diagnostics stage, the share of the start gap closed, margin
``sft_loss``            SFT warm-up cross-entropy per step
``rmsd_pool_quality``   (R-MSD) teacher quality q per task type, share kept at the run's τ and over τ
``rmsd_discriminator``  (R-MSD) D(teacher) vs D(student), pairwise accuracy and loss per discriminator step
``rmsd_sft_loss``       (R-MSD) Stage-1 SFT loss on the best teacher response, and the teacher's own SFT loss
``rmsd_reward_terms``   (R-MSD) Stage-2 reward terms σ(D), R_outer, R_task, R_content and R per phase
``compare_reward``      (several runs) reward terms per phase, one line per run
``compare_eval``        (several runs) eval metrics per phase, one line per run
======================  ====================================================================================

With several runs (``--compare label=dir``) the single-run figures show the first run. A figure whose
tables are missing (GRPO has no judge; eval may not have run; only R-MSD runs have the ``rmsd_*`` tables)
is not drawn: the HTML lists it under "Not drawn" with the reason, and, so that the set of files is
stable for Snakemake, a small placeholder PNG carrying the same reason is written under its name.

Python: ``visd.report.run({"visd": "results", "grpo": "results-grpo"}, "results/report")``.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from visd.io import atomic_path, write_text

# Figure name -> (title, caption). The order is the order of the HTML page.
FIGURES: dict[str, tuple[str, str]] = {
    "reward_terms": ("Reward terms per phase", (
        "Mean of each reward term (R1–R7, zeros included where a term does not apply to the task) and of "
        "the total over the rollouts of each phase, ± standard error. Phase P's rollouts come from the "
        "policy that ended phase P−1 (its global step is under the phase). R5's tolerance σ shrinks with "
        "training progress (4 → 1), so `total` of a later phase is lower for the same completions; "
        "`total_p0` scores R5 at σ = 4 in every phase and is the total to compare across phases."
    )),
    "reward_by_task": ("Total reward per task type", (
        "Mean total reward of each phase's rollouts per task type (± s.e.m.; `total_p0`, R5 at σ = 4 in "
        "every phase, where the rewards table has it); tasks a small model learns fast (counts, colours) "
        "next to harder ones (ordering, boxes)."
    )),
    "lambda": ("λ and learning rate", (
        "λ(s) of the decoupled weights and the learning rate at each optimizer step; shaded bands are "
        "curriculum phases. λ = 0 means plain GRPO (ω ≡ 1)."
    )),
    "train_losses": ("Training losses", (
        "Per optimizer step: total loss and its terms, gradient norm before clipping, range and clip "
        "fraction of the PPO ratio π_θ/π_old, mean |advantage|."
    )),
    "omega_hist": ("ω distribution", (
        "Left: histogram of the token weights ω over every completion token of each phase (log counts; ω "
        "= 1 exactly where A = 0). Right: ω min / mean / max per step and the share of tokens with ω ≠ 1."
    )),
    "judge_fields": ("Judge diagnoses", "Share of rollouts in each category of the judge's four fields, per phase."),
    "logprob_gap": ("Engine vs trainer log-prob gap", (
        "Per rollout, max and mean over its tokens of |log π_engine − log π_trainer| of the sampled "
        "tokens (rollout stage re-scores with the trainer's forward); log scale, one box per phase and "
        "engine."
    )),
    "eval_metrics": ("Evaluation",
                     "Benchmark metrics (percent) of the start policy and of the policy after each phase."),
    "kl_gap": ("Teacher–student gap", (
        "KL between the teacher view (hint) and the student view at the start and after each phase, the "
        "share of the start gap closed, and the mean answer margin."
    )),
    "sft_loss": ("SFT warm-up", "Cross-entropy of the SFT warm-up per step (log scale when it spans a decade) "
                                "and its learning rate."),
    "rmsd_pool_quality": ("R-MSD teacher pool", (
        "Quality q = 1[valid]·Metric of the K teacher responses per input, by task type: share of responses "
        "that are invalid, valid with q = 0, below τ, kept (τ ≤ q < 1) and perfect (q = 1), and the share cut "
        "at the token limit (labels); then the share of "
        "responses with q ≥ τ and of inputs keeping at least one response as τ varies (dashed: the run's τ)."
    )),
    "rmsd_discriminator": ("R-MSD discriminator", (
        "Per discriminator optimizer step, warm-up (teacher vs Stage-1 student samples) then the online update "
        "of each phase: mean D_φ of the matched teacher responses and of the student rollouts, the pairwise "
        "accuracy (share of pairs with D(T) > D(S); 0.5 = chance) and the q-weighted loss q·−log σ(D(T) − D(S))."
    )),
    "rmsd_sft_loss": ("R-MSD Stage-1 SFT", (
        "Cross-entropy of Stage 1 (the student on the best kept teacher response of each input) per step, and "
        "of the SFT that built the workflow's own teacher (absent for an external teacher); log scale when the "
        "loss spans a decade."
    )),
    "rmsd_reward_terms": ("R-MSD reward terms per phase", (
        "Mean ± s.e.m. over each phase's rollouts of the Stage-2 terms: the discriminator term d = σ(D_φ(S)) "
        "(or raw D), R_outer and R_task (format checks), R_content (task metric, closed tasks), the reward "
        "R = α·d + β·R_outer + η·R_task + δ·R_content, and the raw score D_φ(S); D is the discriminator of "
        "the previous phase (the warm-up one at P0)."
    )),
    "compare_reward": ("Method comparison: rewards",
                       "Mean reward terms of each phase's rollouts, one line per run (± s.e.m.)."),
    "compare_eval": ("Method comparison: evaluation",
                     "Benchmark metrics (percent) at the start and after each phase, one line per run."),
}
SINGLE_RUN = ("reward_terms", "reward_by_task", "lambda", "train_losses", "omega_hist", "judge_fields",
              "logprob_gap", "eval_metrics", "kl_gap", "sft_loss", "rmsd_pool_quality", "rmsd_discriminator",
              "rmsd_sft_loss", "rmsd_reward_terms")
RMSD_FIGURES = ("rmsd_pool_quality", "rmsd_discriminator", "rmsd_sft_loss", "rmsd_reward_terms")
COMPARISON = ("compare_reward", "compare_eval")

DPI = 100
PHASE_SHADE = ("#f2f2f2", "#ffffff")
# Judge categories coloured by meaning: green = good, amber = partly, red = wrong, grey = absent / n.a.
CATEGORY_COLORS = {
    "correct": "#2ca02c", "consistent": "#2ca02c", "aligned": "#2ca02c", "accurate": "#2ca02c",
    "partial": "#f0b323", "insufficient": "#f0b323", "loose": "#f0b323", "too_broad": "#f0b323",
    "too_narrow": "#e07b00", "early": "#9467bd", "late": "#8c564b",
    "wrong": "#d62728", "inconsistent": "#d62728", "wrong_event": "#d62728", "wrong_object": "#d62728",
    "missing": "#555555", "not_applicable": "#cccccc", "null": "#eeeeee",
}


class Skip(Exception):
    """A figure cannot be drawn; the message says which table is missing and why."""


# ============================================================================ data of one run

@dataclass
class Run:
    """The tables of one results folder, read on first use."""

    label: str
    root: Path
    _cache: dict = field(default_factory=dict, repr=False)

    def _once(self, key: str, load: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    # ---------------------------------------------------------------- trainer metrics
    def metrics(self) -> list[dict]:
        """Rows of every ``metrics/phase-P.parquet``, ordered by global step."""
        def load():
            rows = []
            for p in sorted(self.root.glob("metrics/phase-*.parquet"), key=_phase_of):
                rows += pq.read_table(p).to_pylist()
            return sorted(rows, key=lambda r: (r.get("global_step") or 0, r.get("phase") or 0))
        return self._once("metrics", load)

    def sft_metrics(self, name: str = "sft") -> list[dict]:
        """Rows of ``metrics/<name>.parquet`` (``sft``, ``rmsd-sft``, ``rmsd-teacher-sft``) by step; [] if absent."""
        p = self.root / "metrics" / f"{name}.parquet"
        return self._once(f"metrics:{name}", lambda: sorted(pq.read_table(p).to_pylist(), key=lambda r: r["step"])
                          if p.exists() else [])

    def recipe(self) -> str | None:
        m = self.metrics()
        return m[-1].get("recipe") if m else None

    def phase_steps(self) -> dict[int, int]:
        """Phase P -> global step of the policy that sampled phase P's rollouts (the end of P−1; 0 at P = 0)."""
        ends: dict[int, int] = {}
        for r in self.metrics():
            ends[int(r["phase"])] = max(ends.get(int(r["phase"]), 0), int(r["global_step"]))
        out = {0: 0}
        for p, s in ends.items():
            out[p + 1] = s
        return out

    # ---------------------------------------------------------------- per-phase tables (DuckDB views)
    def sql(self, table: str, query: str) -> list[tuple]:
        """Run ``query`` over the views of :func:`visd.audit.connect`; :class:`Skip` if ``table`` is absent."""
        con, found = self._once("duckdb", lambda: _connect(self.root))
        if table not in found:
            raise Skip(f"no {table} tables under {self.root} ({_table_glob(table)})")
        return con.sql(query).fetchall()

    def has(self, table: str) -> bool:
        return table in self._once("duckdb", lambda: _connect(self.root))[1]

    def columns(self, table: str) -> set[str]:
        return {r[0] for r in self.sql(table, f"DESCRIBE {table}")}

    def reward_stats(self) -> tuple[list[str], dict[int, dict[str, tuple[float, float, int]]]]:
        """(terms, {phase: {term: (mean, s.e.m., n)}}) over the rollouts of each phase."""
        def load():
            from visd.rewards import REWARD_TERMS

            cols = self.columns("rewards")
            terms = [t for t in (*REWARD_TERMS, "total", "total_p0") if t in cols]
            if not terms:
                raise Skip(f"the rewards tables under {self.root} have no reward term columns")
            sel = ", ".join(f"avg({t}), stddev_samp({t}), count({t})" for t in terms)
            out: dict[int, dict] = {}
            for row in self.sql("rewards", f"SELECT phase, {sel} FROM rewards GROUP BY phase ORDER BY phase"):
                out[int(row[0])] = {t: _mean_sem(*row[1 + 3 * i:4 + 3 * i]) for i, t in enumerate(terms)}
            return terms, out
        return self._once("reward_stats", load)

    def evals(self) -> list[dict]:
        """Every ``eval/start/<bench>.json`` and ``eval/phase-P/<bench>.json`` (summary files)."""
        def load():
            out = []
            for p in sorted(self.root.glob("eval/*/*.json")):
                if p.parent.name != "start" and not p.parent.name.startswith("phase-"):
                    continue
                try:
                    d = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    print(f"[report] skipping {p}: not valid JSON ({e})", file=sys.stderr)
                    continue
                if not isinstance(d.get("metrics"), dict):
                    print(f"[report] skipping {p}: no 'metrics' object", file=sys.stderr)
                    continue
                d.setdefault("benchmark", p.stem)
                d["phase"] = _tag_phase(p.parent.name)  # the folder is authoritative: start = −1
                out.append(d)
            return out
        return self._once("evals", load)

    def kl_gaps(self) -> list[dict]:
        def load():
            out = []
            for p in sorted(self.root.glob("diagnostics/kl_gap/*.json")):
                try:
                    d = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    print(f"[report] skipping {p}: not valid JSON ({e})", file=sys.stderr)
                    continue
                if p.stem != "start" and not p.stem.startswith("phase-"):
                    continue
                d["phase"] = _tag_phase(p.stem)  # the file name is authoritative ("phase" may be "start")
                out.append(d)
            return sorted(out, key=lambda d: int(d["phase"]))
        return self._once("kl_gaps", load)


def _connect(root: Path):
    from visd.audit import connect

    return connect(root)


def _table_glob(table: str) -> str:
    from visd.audit import TABLES

    return TABLES.get(table, table)


def _tag_phase(tag: str) -> int:
    """``start`` → −1, ``phase-P`` → P."""
    return -1 if tag == "start" else _phase_of(Path(tag))


def _phase_of(path: Path) -> int:
    digits = "".join(c for c in Path(path).stem.split("phase-")[-1] if c.isdigit())
    return int(digits) if digits else -1


def _mean_sem(mean, std, n) -> tuple[float, float, int]:
    n = int(n or 0)
    if mean is None or n == 0:
        return float("nan"), float("nan"), 0
    sem = float(std) / math.sqrt(n) if (std is not None and n > 1) else 0.0
    return float(mean), sem, n


def _num(v) -> float:
    return float("nan") if v is None else float(v)


# ============================================================================ plotting helpers

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 8, "figure.dpi": DPI})
    return plt


def _save(fig, path: Path, tight: bool = True) -> None:
    with atomic_path(path, ".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
        _readable(tmp)
    _plt().close(fig)


def _readable(path: Path) -> None:
    """Give a file the usual permissions (the atomic temporary file is created 0600)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _shade_phases(ax, metrics: list[dict], label: bool = True) -> None:
    """Alternating background per curriculum phase over a global-step axis, labelled at the top."""
    spans: dict[int, list[int]] = {}
    for r in metrics:
        spans.setdefault(int(r["phase"]), []).append(int(r["global_step"]))
    for i, (p, steps) in enumerate(sorted(spans.items())):
        lo, hi = min(steps) - 0.5, max(steps) + 0.5
        ax.axvspan(lo, hi, color=PHASE_SHADE[i % 2], zorder=0)
        if label:
            ax.text((lo + hi) / 2, 1.0, f"phase {p}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, color="0.4")


def _phase_axis(ax, phases: list[int], steps: dict[int, int], start: bool = False) -> None:
    """Ticks at phase indices labelled with the policy's global step (``start`` = phase −1 = start policy)."""
    ticks = sorted(set(phases))
    labels = []
    for p in ticks:
        if p < 0:
            labels.append("start")
        else:
            s = steps.get(p)
            labels.append(f"P{p}" + (f"\nstep {s}" if s is not None else ""))
    ax.set_xticks(ticks, labels)
    if ticks:
        ax.set_xlim(min(ticks) - 0.4, max(ticks) + 0.4)


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs = np.array([r["global_step"] for r in rows if r.get(key) is not None], dtype=float)
    ys = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
    return xs, ys


def _placeholder(path: Path, title: str, reason: str) -> None:
    plt = _plt()
    fig = plt.figure(figsize=(6, 1.6))
    fig.text(0.5, 0.62, f"{title}: not drawn", ha="center", va="center", fontsize=11, weight="bold")
    fig.text(0.5, 0.3, _wrap(reason, 90), ha="center", va="center", fontsize=8, color="0.3")
    _save(fig, path, tight=False)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _plain_formatter(minor: bool = False):
    """Log-axis tick labels as plain numbers (0.5, 2, 10) instead of 5×10⁻¹; minor ticks only at 2, 3, 5."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _):
        if v <= 0:
            return ""
        if minor and round(v / 10 ** math.floor(math.log10(v)), 6) not in (2.0, 3.0, 5.0):
            return ""
        return f"{v:g}"

    return FuncFormatter(fmt)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


# ============================================================================ single-run figures

def fig_reward_terms(run: Run, path: Path) -> None:
    terms, stats = run.reward_stats()
    plt = _plt()
    steps = run.phase_steps()
    phases = sorted(stats)
    nr, nc = _grid(len(terms), 4)
    fig, axes = plt.subplots(nr, nc, figsize=(3.1 * nc, 2.5 * nr), squeeze=False, sharex=True)
    for ax, t in zip(axes.flat, terms):
        m = np.array([stats[p][t][0] for p in phases])
        e = np.array([stats[p][t][1] for p in phases])
        ax.errorbar(phases, m, yerr=e, marker="o", capsize=3, color="black" if t.startswith("total") else "C0")
        ax.set_title(t, weight="bold" if t.startswith("total") else "normal")
        _phase_axis(ax, phases, steps)
        lo, hi = np.nanmin(m - e), np.nanmax(m + e)
        if np.isfinite(lo) and np.isfinite(hi):
            pad = max(0.05, 0.1 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)  # rewards are ≥ 0
    for ax in axes.flat[len(terms):]:
        ax.set_visible(False)
    n = sum(stats[p][terms[0]][2] for p in phases)
    fig.suptitle(f"{run.label}: reward terms of each phase's rollouts (mean ± s.e.m., {n} rollouts)")
    fig.tight_layout()
    _save(fig, path)


def fig_reward_by_task(run: Run, path: Path) -> None:
    if not run.has("samples"):
        raise Skip(f"no samples.parquet under {run.root}: task types unknown")
    col = "total_p0" if "total_p0" in run.columns("rewards") else "total"  # comparable across phases
    rows = run.sql("rewards", f"SELECT r.phase, s.task_type, avg(r.{col}), stddev_samp(r.{col}), count(*) "
                              "FROM rewards r JOIN samples s USING (sample_id) GROUP BY ALL ORDER BY ALL")
    if not rows:
        raise Skip("no rewards row matches a sample of samples.parquet")
    plt = _plt()
    steps = run.phase_steps()
    by_task: dict[str, dict[int, tuple]] = {}
    for p, tt, mean, std, n in rows:
        by_task.setdefault(tt, {})[int(p)] = _mean_sem(mean, std, n)
    phases = sorted({int(r[0]) for r in rows})
    fig, ax = plt.subplots(figsize=(7.5, 4))
    k = len(by_task)
    for i, (tt, d) in enumerate(sorted(by_task.items())):
        ps = sorted(d)
        off = (i - (k - 1) / 2) * 0.04  # small horizontal offset so error bars do not hide each other
        ax.errorbar(np.array(ps) + off, [d[p][0] for p in ps], yerr=[d[p][1] for p in ps], marker="o",
                    capsize=3, label=f"{tt} (n={sum(d[p][2] for p in ps)})")
    _phase_axis(ax, phases, steps)
    ax.set_ylabel("mean total reward" + (" (R5 at σ = 4)" if col == "total_p0" else ""))
    ax.set_title(f"{run.label}: {col} per task type (mean ± s.e.m. over rollouts)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, path)


def _need_metrics(run: Run) -> list[dict]:
    m = run.metrics()
    if not m:
        raise Skip(f"no trainer metrics under {run.root} (metrics/phase-*.parquet)")
    return m


def fig_lambda(run: Run, path: Path) -> None:
    m = _need_metrics(run)
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 4.8), sharex=True)
    _shade_phases(a1, m)
    _shade_phases(a2, m, label=False)
    x, lam = _series(m, "lambda")
    a1.plot(x, lam, "o-", color="C3", ms=4)
    a1.set_ylabel("λ")
    top = max(0.05, float(np.nanmax(lam)) * 1.15) if len(lam) else 1.0
    a1.set_ylim(-0.03 * top, top)  # λ = 0 stays visible above the axis
    recipe = run.recipe()
    note = "" if recipe == "visd" else f" (recipe {recipe}: no decoupled weights, λ unused)"
    a1.set_title(f"{run.label}: λ(s){note}", pad=12)
    x, lr = _series(m, "lr")
    a2.plot(x, lr, marker=".", color="C0")
    a2.set_ylabel("learning rate")
    a2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    a2.set_xlabel("global optimizer step")
    fig.tight_layout()
    _save(fig, path)


def fig_train_losses(run: Run, path: Path) -> None:
    m = _need_metrics(run)
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    a_loss, a_gn, a_ratio, a_adv = axes.flat
    for ax in axes.flat:
        _shade_phases(ax, m)
    for k, style in (("loss", "k-"), ("pg_loss", "C0--"), ("jsd_loss", "C1--"), ("sampled_token_loss", "C2--"),
                     ("sft_loss", "C4--"), ("kl", "C3:")):
        x, y = _series(m, k)
        if len(x):
            a_loss.plot(x, y, style, marker=".", label=k)
    a_loss.set_title("loss terms", pad=12)
    a_loss.legend()
    x, y = _series(m, "grad_norm")
    a_gn.plot(x, y, "C0-", marker=".")
    a_gn.set_title("gradient norm (before clipping)", pad=12)
    x, lo = _series(m, "ratio_min")
    if len(x):
        _, hi = _series(m, "ratio_max")
        _, mean = _series(m, "ratio_mean")
        a_ratio.fill_between(x, lo, hi, color="C0", alpha=0.25, label="min–max")
        a_ratio.plot(x, mean, "C0-", marker=".", label="mean")
        a_ratio.axhline(1.0, color="0.5", lw=0.8)
        a_ratio.set_yscale("log")  # ratios are > 0 and spread multiplicatively around 1
        a_ratio.yaxis.set_major_formatter(_plain_formatter())
        a_ratio.set_ylabel("π_θ / π_old (log scale)")
        tw = a_ratio.twinx()
        xc, clip = _series(m, "ratio_clip_frac")
        tw.plot(xc, clip, "C3--", marker="x", label="clip fraction")
        tw.set_ylabel("clip fraction", color="C3")
        top = max(0.05, float(np.nanmax(clip)) * 1.2) if len(clip) else 1.0
        tw.set_ylim(-0.03 * top, top)
        tw.grid(False)
        h1, l1 = a_ratio.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        a_ratio.legend(h1 + h2, l1 + l2, loc="upper left")
    else:
        a_ratio.text(0.5, 0.5, "no PPO ratio (recipe without a policy-gradient term)", ha="center",
                     transform=a_ratio.transAxes, color="0.4")
    a_ratio.set_title("PPO ratio", pad=12)
    x, y = _series(m, "advantage_abs_mean")
    a_adv.plot(x, y, "C2-", marker=".", label="mean |A|")
    x, y = _series(m, "reward_mean")
    a_adv.plot(x, y, "C1-", marker=".", label="batch reward mean")
    a_adv.set_title("advantages and batch reward", pad=12)
    a_adv.legend()
    for ax in axes[1]:
        ax.set_xlabel("global optimizer step")
    fig.suptitle(f"{run.label}: training ({run.recipe()})")
    fig.tight_layout()
    _save(fig, path)


def fig_omega_hist(run: Run, path: Path) -> None:
    m = _need_metrics(run)
    if all(r.get("omega_mean") is None for r in m):
        raise Skip(f"recipe {run.recipe()} has no token weights ω (only visd / grpo log them)")
    plt = _plt()
    fig, (ah, ast) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.3, 1]})
    hists: dict[int, np.ndarray] = {}
    for r in m:
        if r.get("omega_hist"):
            h = np.asarray(r["omega_hist"], dtype=np.int64)
            p = int(r["phase"])
            hists[p] = hists[p] + h if p in hists else h
    if hists:
        from visd.train import OMEGA_HIST_EDGES

        edges = np.asarray(OMEGA_HIST_EDGES, dtype=float)
        width = float(edges[1] - edges[0])
        total = np.sum(list(hists.values()), axis=0)
        if len(total) != len(edges) + 1:
            raise Skip(f"omega_hist has {len(total)} bins but visd.train.OMEGA_HIST_EDGES gives {len(edges) + 1}: "
                       "the metrics were written by another version of the trainer")
        nz = np.nonzero(total[1:-1])[0]
        lo_i, hi_i = (int(nz.min()), int(nz.max())) if len(nz) else (len(edges) // 2 - 1, len(edges) // 2)
        lo_i, hi_i = max(0, lo_i - 2), min(len(edges) - 2, hi_i + 2)
        left = edges[lo_i:hi_i + 1]
        for i, (p, h) in enumerate(sorted(hists.items())):
            inner = h[1:-1][lo_i:hi_i + 1]
            n = int(h.sum())
            ah.stairs(inner, np.append(left, left[-1] + width), label=f"phase {p} ({n} tokens)", lw=1.5,
                      color=f"C{i}")
            out = int(h[0] + h[-1])
            if out:
                ah.text(0.02, 0.95 - 0.06 * i, f"phase {p}: {out} tokens outside [{edges[0]}, {edges[-1]})",
                        transform=ah.transAxes, fontsize=7, color=f"C{i}")
        if not any(r.get("omega_frac_changed") for r in m):
            ah.text(0.5, 0.5, "ω ≡ 1 on every token\n(no decoupled weights: GRPO or λ = 0)", ha="center",
                    va="center", transform=ah.transAxes, color="0.3", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "0.7"})
        ah.set_yscale("log")
        ah.set_ylim(0.8, max(10.0, float(max(h[1:-1].max() for h in hists.values())) * 3))  # room for the legend
        ah.set_xlabel(f"ω (bins of {width:g})")
        ah.set_ylabel("completion tokens")
        ah.axvline(1.0, color="0.5", lw=0.8, ls=":")
        ah.legend(loc="upper right")
        ah.set_title("ω per phase")
    else:
        ah.text(0.5, 0.5, "no omega_hist column in the metrics\n(written by a trainer before the histogram "
                "was logged; rerun train)", ha="center", va="center", transform=ah.transAxes, color="0.4")
        ah.set_title("ω per phase")
    _shade_phases(ast, m)
    x, lo = _series(m, "omega_min")
    _, hi = _series(m, "omega_max")
    _, mean = _series(m, "omega_mean")
    ast.fill_between(x, lo, hi, color="C0", alpha=0.25, label="min–max")
    ast.plot(x, mean, "C0-", marker=".", label="mean")
    ast.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ast.set_xlabel("global optimizer step")
    ast.set_ylabel("ω")
    tw = ast.twinx()
    xf, frac = _series(m, "omega_frac_changed")
    tw.plot(xf, frac, "C3--", marker="x", label="share ω ≠ 1")
    tw.set_ylim(-0.03, 1.05)
    tw.set_ylabel("share of tokens with ω ≠ 1", color="C3")
    tw.grid(False)
    h1, l1 = ast.get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    ast.legend(h1 + h2, l1 + l2, loc="lower left")
    ast.set_title("ω per step", pad=12)
    fig.suptitle(f"{run.label}: token weights ω ({run.recipe()})")
    fig.tight_layout()
    _save(fig, path)


def fig_judge_fields(run: Run, path: Path) -> None:
    from visd.judge.record import CATEGORICAL_FIELDS

    cols = run.columns("judge")
    fields = [f for f in CATEGORICAL_FIELDS if f in cols]
    if not fields:
        raise Skip("the judge tables have none of the categorical fields")
    plt = _plt()
    steps = run.phase_steps()
    nr, nc = _grid(len(fields), 2)
    fig, axes = plt.subplots(nr, nc, figsize=(6.2 * nc, 2.8 * nr), squeeze=False)
    phases_all: set[int] = set()
    for ax, f in zip(axes.flat, fields):
        rows = run.sql("judge", f"SELECT phase, coalesce({f}, 'null'), count(*) FROM judge GROUP BY ALL ORDER BY ALL")
        counts: dict[int, dict[str, int]] = {}
        for p, cat, n in rows:
            counts.setdefault(int(p), {})[cat] = int(n)
        phases = sorted(counts)
        phases_all |= set(phases)
        cats = [c for c in CATEGORICAL_FIELDS[f] if any(c in counts[p] for p in phases)]
        cats += sorted({c for p in phases for c in counts[p]} - set(cats))  # unknown values (older judges)
        totals = np.array([sum(counts[p].values()) for p in phases], dtype=float)
        bottom = np.zeros(len(phases))
        cmap = plt.get_cmap("tab10")
        for i, c in enumerate(cats):
            share = np.array([counts[p].get(c, 0) for p in phases]) / totals
            color = CATEGORY_COLORS.get(c, cmap(i % 10))
            ax.bar(phases, share, bottom=bottom, color=color, label=c, width=0.6, edgecolor="white", lw=0.5)
            for x, s, b in zip(phases, share, bottom):
                if s >= 0.08:
                    ax.text(x, b + s / 2, f"{s:.0%}", ha="center", va="center", fontsize=7)
            bottom += share
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of rollouts")
        ax.set_title(f"{f} (n = {int(totals.sum())})")
        _phase_axis(ax, phases, steps)
        h, lab = ax.get_legend_handles_labels()  # top of the legend = top of the stack
        ax.legend(h[::-1], lab[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
        ax.grid(False)
    for ax in axes.flat[len(fields):]:
        ax.set_visible(False)
    fig.suptitle(f"{run.label}: judge diagnoses per phase")
    fig.tight_layout()
    _save(fig, path)


def fig_logprob_gap(run: Run, path: Path) -> None:
    cols = run.columns("rollouts")
    if "trainer_logprob_gap_max" not in cols:
        raise Skip("the rollouts tables have no trainer_logprob_gap_max column")
    rows = run.sql("rollouts", "SELECT phase, coalesce(engine, '?'), trainer_logprob_gap_max, "
                               "trainer_logprob_gap_mean FROM rollouts "
                               "WHERE trainer_logprob_gap_max IS NOT NULL ORDER BY phase")
    if not rows:
        raise Skip("no rollout has a recorded gap (rollout.record_gap is off)")
    plt = _plt()
    steps = run.phase_steps()
    groups: dict[tuple[int, str], tuple[list, list]] = {}
    for p, eng, gmax, gmean in rows:
        g = groups.setdefault((int(p), eng), ([], []))
        g[0].append(float(gmax))
        g[1].append(_num(gmean))
    engines = sorted({k[1] for k in groups})
    phases = sorted({k[0] for k in groups})
    floor = 1e-9  # exact agreement (gap 0) is drawn at this floor of the log axis
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, which, name in ((axes[0], 0, "max over tokens"), (axes[1], 1, "mean over tokens")):
        for j, eng in enumerate(engines):
            data, pos = [], []
            for p in phases:
                if (p, eng) in groups:
                    v = np.asarray(groups[(p, eng)][which], dtype=float)
                    data.append(np.maximum(v[np.isfinite(v)], floor))
                    pos.append(p + (j - (len(engines) - 1) / 2) * 0.25)
            bp = ax.boxplot(data, positions=pos, widths=0.2, patch_artist=True, showfliers=True,
                            flierprops={"markersize": 3})
            for b in bp["boxes"]:
                b.set_facecolor(f"C{j}")
                b.set_alpha(0.5)
            ax.plot([], [], "s", color=f"C{j}", alpha=0.5, label=f"engine {eng}")
        ax.set_yscale("log")
        _phase_axis(ax, phases, steps)
        zeros = sum(int(np.sum(np.asarray(g[which], dtype=float) == 0)) for g in groups.values())
        if zeros:
            ax.text(0.01, 0.01, f"{zeros} rollouts with gap 0 drawn at {floor:g}", transform=ax.transAxes,
                    fontsize=7, color="0.4")
        ax.set_title(f"|Δ log p| per rollout, {name}")
        ax.legend(loc="upper right")
    axes[0].set_ylabel("engine − trainer log-prob gap (nats)")
    worst = max(max(g[0]) for g in groups.values())
    fig.suptitle(f"{run.label}: engine vs trainer log-probabilities ({len(rows)} rollouts, max gap {worst:.2g})")
    fig.tight_layout()
    _save(fig, path)


# Eval metrics are flat names (``score``, ``score/<task>``, ``mcq/accuracy``, ``vstar/mAM``, ...). Drawn: names
# of at most two parts, without a threshold (``AP@0.5``) and that are percentages (not ``n_items``, flags);
# breakdowns (``vstar/short/...``) and thresholded metrics stay in the JSON. The table shows the headlines.
EVAL_NOT_PERCENT = ("unparsable", "acc_is_llm_judge")
EVAL_HEADLINE = ("score", "format", "accuracy", "Acc", "Acc_offline", "mAM", "mLGM")


def _eval_drawn(metric: str) -> bool:
    parts = metric.split("/")
    last = parts[-1]
    return len(parts) <= 2 and "@" not in metric and not last.startswith("n_") and last not in EVAL_NOT_PERCENT


def _eval_group(metric: str) -> str:
    """Panel of a metric: its first part (``score``, ``mcq``, ``vstar``), ``overall`` for one-part names."""
    return metric.split("/")[0] if "/" in metric else "overall"


def _eval_points(run: Run, everything: bool = False) -> dict[str, dict[str, dict[int, float]]]:
    """{benchmark: {metric: {phase (−1 = start): value}}} of the drawn metrics (``everything``: all numbers)."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for d in run.evals():
        for k, v in d["metrics"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (everything or _eval_drawn(k)):
                out.setdefault(str(d["benchmark"]), {}).setdefault(k, {})[int(d["phase"])] = float(v)
    return out


def _eval_steps(run: Run) -> dict[int, int]:
    steps = {}
    for d in run.evals():
        if d.get("step") is not None:
            steps[int(d["phase"])] = int(d["step"])
    return steps


def _eval_axis(ax, phases: list[int], steps: dict[int, int]) -> None:
    ticks = sorted(set(phases))
    ax.set_xticks(ticks, [("start" if p < 0 else f"after P{p}") + (f"\nstep {steps[p]}" if p in steps else "")
                          for p in ticks])
    if ticks:
        ax.set_xlim(min(ticks) - 0.4, max(ticks) + 0.4)


def fig_eval_metrics(run: Run, path: Path) -> None:
    pts = _eval_points(run)
    if not pts:
        raise Skip(f"no evaluation summaries under {run.root} (eval/start/*.json, eval/phase-P/*.json)")
    plt = _plt()
    steps = _eval_steps(run)
    everything = _eval_points(run, everything=True)
    panels = []  # (benchmark, group, {metric: {phase: value}})
    for b in sorted(pts):
        groups: dict[str, dict] = {}
        for k, d in pts[b].items():
            groups.setdefault(_eval_group(k), {})[k] = d
        order = sorted(groups, key=lambda g: (g != "overall", g != "score", g))
        panels += [(b, g, groups[g]) for g in order]
    nr, nc = _grid(len(panels), 3)
    fig, axes = plt.subplots(nr, nc, figsize=(5.6 * nc, 3.4 * nr), squeeze=False)
    for ax, (b, g, ms) in zip(axes.flat, panels):
        phases: set[int] = set()
        cmap, nc_ = (plt.get_cmap("tab10"), 10) if len(ms) <= 10 else (plt.get_cmap("tab20"), 20)
        for i, (metric, d) in enumerate(sorted(ms.items())):
            ps = sorted(d)
            phases |= set(ps)
            ax.plot(ps, [d[p] for p in ps], marker="o", ms=4, color=cmap(i % nc_), ls=("-", "--", ":")[i // nc_ % 3],
                    label=metric.split("/", 1)[-1] if g != "overall" else metric)
        _eval_axis(ax, sorted(phases), steps)
        n = {d.get("n_items") for d in run.evals() if d["benchmark"] == b} - {None}
        ax.set_title(f"{b}: {g}" + (f" ({'/'.join(map(str, sorted(n)))} items)" if n and g == "overall" else ""))
        ax.set_ylabel("percent")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    hidden = sum(len(ms) for ms in everything.values()) - sum(len(ms) for ms in pts.values())
    note = f" ({hidden} breakdown / count metrics not drawn: see eval/*/<bench>.json)" if hidden else ""
    fig.suptitle(f"{run.label}: evaluation{note}")
    fig.tight_layout()
    _save(fig, path)


def fig_kl_gap(run: Run, path: Path) -> None:
    rows = run.kl_gaps()
    if not rows:
        raise Skip(f"no KL-gap diagnostics under {run.root} (diagnostics/kl_gap/*.json)")
    plt = _plt()
    phases = [int(d["phase"]) for d in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    a_kl, a_gap, a_m = axes
    a_kl.plot(phases, [_num(d.get("kl")) for d in rows], "C0-o")
    a_kl.set_title("KL(teacher view ‖ student view)")
    a_kl.set_ylabel("nats per token")
    start = [_num(d.get("kl")) for d in rows if int(d["phase"]) < 0]
    if start:
        a_kl.axhline(start[0], color="0.5", lw=0.8, ls="--", label="start")
        a_kl.legend(loc="best")
    gp = [(int(d["phase"]), _num(d.get("gap_closed"))) for d in rows if d.get("gap_closed") is not None]
    if gp:
        vals = [g for _, g in gp]
        a_gap.bar([p for p, _ in gp], vals, color=["C2" if g >= 0 else "C3" for g in vals], width=0.6)
        a_gap.axhline(0, color="0.4", lw=0.8)
        lo, hi = min(0.0, *vals), max(0.0, *vals)
        pad = 0.15 * max(hi - lo, 1e-3)
        a_gap.set_ylim(lo - pad, hi + pad)
        for p, g in gp:
            a_gap.text(p, g, f"{g:.2f}", ha="center", va="bottom" if g >= 0 else "top", fontsize=8)
    else:
        a_gap.text(0.5, 0.5, "no gap_closed values", ha="center", transform=a_gap.transAxes, color="0.4")
    a_gap.set_title("gap closed (1 − KL / KL_start; < 0: wider)")
    a_m.plot(phases, [_num(d.get("margin_mean")) for d in rows], "C1-o")
    a_m.axhline(0, color="0.4", lw=0.8)
    a_m.set_title("mean answer margin (teacher − student log p)")
    for ax in axes:
        ax.set_xticks(sorted(set(phases)), [("start" if p < 0 else f"after P{p}") for p in sorted(set(phases))])
        ax.set_xlim(min(phases) - 0.5, max(phases) + 0.5)
    n = {d.get("n_samples") for d in rows} - {None}
    fig.suptitle(f"{run.label}: teacher–student gap" + (f" ({'/'.join(map(str, sorted(n)))} samples)" if n else ""))
    fig.tight_layout()
    _save(fig, path)


def _loss_panel(ax, rows: list[dict], xlabel: str = "SFT step") -> float:
    """Cross-entropy per step (log scale when it spans a decade, running mean when long) and its learning rate
    on a twin axis (a legend note when constant); returns the final loss."""
    x = np.array([r["step"] for r in rows], dtype=float)
    y = np.array([r["loss"] for r in rows], dtype=float)
    few = len(y) <= 40
    ax.plot(x, y, color="C0", lw=1.0 if few else 0.6, alpha=1.0 if few else 0.4, marker="o" if few else None, ms=3,
            label="per step")
    k = max(1, len(y) // 40)
    if k > 1:
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1:], smooth, color="C0", lw=1.8, label=f"mean of {k} steps")
    pos = y[np.isfinite(y) & (y > 0)]
    if len(pos) and pos.max() / pos.min() >= 10:  # log scale where the loss spans a decade (else no tick labels)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_formatter())
        ax.yaxis.set_minor_formatter(_plain_formatter(minor=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cross-entropy (nats / token)")
    if few:
        ax.xaxis.get_major_locator().set_params(integer=True)
    lrs = {r.get("lr") for r in rows}
    if len(lrs) == 1 and None not in lrs:  # a constant learning rate is a legend note, not a curve
        ax.plot([], [], " ", label=f"learning rate {lrs.pop():.3g} (constant)")
        ax.legend(loc="upper right")
    elif "lr" in rows[0]:
        tw = ax.twinx()
        tw.plot(x, [_num(r.get("lr")) for r in rows], "C3--", lw=1, label="learning rate")
        tw.set_ylabel("learning rate", color="C3")
        tw.grid(False)
        tw.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right")
    else:
        ax.legend(loc="upper right")
    return float(y[-1])


def fig_sft_loss(run: Run, path: Path) -> None:
    rows = run.sft_metrics()
    if not rows:
        raise Skip(f"no SFT warm-up metrics under {run.root} (metrics/sft.parquet; sft.enabled false?)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    final = _loss_panel(ax, rows)
    ax.set_title(f"{run.label}: SFT warm-up ({len(rows)} steps, final loss {final:.3f})")
    fig.tight_layout()
    _save(fig, path)


# ============================================================================ R-MSD figures (METHODS §3)

# Quality bands of a teacher response, worst to best (colours as the judge categories: red wrong, green good).
RMSD_Q_BANDS = (("invalid (q = 0)", "#d62728"), ("valid, q = 0", "#e07b00"), ("0 < q < τ", "#f0b323"),
                ("τ ≤ q < 1", "#98df8a"), ("q = 1", "#2ca02c"))
RMSD_TASK_ORDER = ("mcq", "numeric", "temporal", "spatial", "spatiotemporal", "open")


def _q_band(valid: bool, q: float, tau: float) -> int:
    if not valid:
        return 0
    if q <= 0:
        return 1
    return 2 if q < tau else (4 if q >= 1 else 3)


def fig_rmsd_pool_quality(run: Run, path: Path) -> None:
    from visd.audit import RMSD_TAU_GRID

    rows = run.sql("rmsd_pool", "SELECT task_type, sample_id, valid, quality, kept, tau, k, "
                                "coalesce(finish_reason = 'length', false) FROM rmsd_pool")
    if not rows:
        raise Skip(f"the R-MSD pool tables under {run.root} have no rows (every teacher generation failed?)")
    tau = float(min(r[5] for r in rows))
    tasks = sorted({r[0] for r in rows}, key=lambda t: (RMSD_TASK_ORDER.index(t) if t in RMSD_TASK_ORDER else 99, t))
    groups = {t: [r for r in rows if r[0] == t] for t in tasks}
    groups["all"] = rows
    names = [*tasks, "all"]
    plt = _plt()
    fig, (ab, ar, ai) = plt.subplots(1, 3, figsize=(15, 2.6 + 0.45 * len(names)),
                                     gridspec_kw={"width_ratios": [1.4, 1, 1]})
    # left: quality bands per task type (stacked shares of responses)
    ys = np.arange(len(names))[::-1]
    left = np.zeros(len(names))
    for b, (band, color) in enumerate(RMSD_Q_BANDS):
        share = np.array([np.mean([_q_band(bool(r[2]), float(r[3]), tau) == b for r in groups[n]]) for n in names])
        fate = "kept" if (b >= 3 or tau <= 0) else "dropped"  # q ≥ τ is kept: everything at τ = 0
        ab.barh(ys, share, left=left, color=color, label=f"{band.replace('τ', f'τ={tau:g}')}: {fate}", height=0.65,
                edgecolor="white", lw=0.5)
        for y, sh, lo in zip(ys, share, left):
            if sh >= 0.07:
                ab.text(lo + sh / 2, y, f"{sh:.0%}", ha="center", va="center", fontsize=7)
        left += share
    labels = []
    for n in names:
        g = groups[n]
        qm = float(np.mean([float(r[3]) for r in g]))
        cut = float(np.mean([bool(r[7]) for r in g]))  # responses cut at max_new_tokens (usually invalid)
        labels.append(f"{n}\n{len({r[1] for r in g})} inputs, {len(g)} resp., mean q {qm:.2f}"
                      + (f"\n{cut:.0%} cut at max_new_tokens" if cut else ""))
    ab.set_yticks(ys, labels, fontsize=7)
    ab.get_yticklabels()[-1].set_weight("bold")
    ab.set_xlim(0, 1)
    ab.grid(False)
    ab.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=7)
    ab.set_title("quality of the teacher responses (share of responses)")
    # middle / right: share of responses with q ≥ τ', of inputs with a response q ≥ τ', over τ'
    grid = np.linspace(0, 1, 101)
    for i, n in enumerate(names):
        g = groups[n]
        q = np.array([float(r[3]) for r in g])
        best: dict[str, float] = {}
        for r in g:
            best[r[1]] = max(best.get(r[1], -1.0), float(r[3]))
        qb = np.array(list(best.values()))
        style = {"color": "black", "lw": 2.0} if n == "all" else {"color": f"C{i}", "lw": 1.2}
        kept = float(np.mean([bool(r[4]) for r in g]))
        inputs_kept = len({r[1] for r in g if r[4]}) / len(best)
        ar.plot(grid, [(q >= t).mean() for t in grid], label=f"{n} ({kept:.0%})", **style)
        ai.plot(grid, [(qb >= t).mean() for t in grid], label=f"{n} ({inputs_kept:.0%})", **style)
        for ax, v in ((ar, q), (ai, qb)):
            ax.plot(RMSD_TAU_GRID, [(v >= t).mean() for t in RMSD_TAU_GRID], "o", ms=3.5, color=style["color"])
    for ax, what in ((ar, "responses with q ≥ τ"), (ai, "inputs keeping ≥ 1 response")):
        ax.axvline(tau, color="0.3", ls="--", lw=1)
        ax.text(tau, 1.02, f" run τ = {tau:g}", transform=ax.get_xaxis_transform(), fontsize=7, color="0.3")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("threshold τ (dots: the audit's grid)")
        ax.set_ylabel(f"share of {what.split()[0]}")
        ax.set_title(what, pad=14)
        ax.legend(title=f"kept at the run's τ = {tau:g} (stored flags)", loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7, title_fontsize=7)
    k = max(int(r[6]) for r in rows)
    n_in = len({r[1] for r in rows})
    kept_all = float(np.mean([bool(r[4]) for r in rows]))
    fig.suptitle(f"{run.label}: R-MSD teacher pool ({n_in} inputs × K = {k}; τ = {tau:g} keeps {kept_all:.0%} of "
                 "the responses)")
    fig.tight_layout()
    _save(fig, path)


def _segments(keys: list) -> list[tuple[Any, int, int]]:
    """Runs of equal consecutive keys as (key, first index, last index)."""
    out: list[tuple[Any, int, int]] = []
    for i, k in enumerate(keys):
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1], i)
        else:
            out.append((k, i, i))
    return out


def fig_rmsd_discriminator(run: Run, path: Path) -> None:
    cols = run.columns("rmsd_discriminator")
    need = {"kind", "step", "loss", "d_teacher_mean", "d_student_mean", "pair_accuracy"}
    if not need <= cols:
        raise Skip(f"the discriminator metrics under {run.root} have no steps (columns {sorted(cols)}; no "
                   "teacher–student pairs?)")
    rows = run.sql("rmsd_discriminator", "SELECT phase, kind, step, loss, d_teacher_mean, d_student_mean, "
                                         "pair_accuracy FROM rmsd_discriminator WHERE step IS NOT NULL "
                                         "ORDER BY kind <> 'warmup', phase, step")
    if not rows:
        raise Skip("the discriminator metrics tables have no steps (no teacher–student pairs?)")
    step = np.array([r[2] for r in rows], dtype=float)
    x = step if np.all(np.diff(step) > 0) else np.arange(1, len(rows) + 1, dtype=float)
    loss, dt, ds, acc = (np.array([_num(r[i]) for r in rows]) for i in (3, 4, 5, 6))
    segs = _segments([("warm-up" if r[1] == "warmup" else f"P{int(r[0])}") for r in rows])
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [1.4, 1, 1]})
    few = len(x) <= 60
    mk = {"marker": "o", "ms": 3} if few else {}
    for ax in (a1, a2, a3):
        for j, (name, lo, hi) in enumerate(segs):
            ax.axvspan(x[lo] - 0.5, x[hi] + 0.5, color=PHASE_SHADE[j % 2] if name != "warm-up" else "#e8eef7", zorder=0)
            if ax is a1:
                ax.text((x[lo] + x[hi]) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=7, color="0.4")
    a1.plot(x, dt, color="C2", label="D(teacher response)", **mk)
    a1.plot(x, ds, color="C3", label="D(student rollout)", **mk)
    a1.fill_between(x, ds, dt, where=dt >= ds, color="C2", alpha=0.12, interpolate=True)
    a1.fill_between(x, ds, dt, where=dt < ds, color="C3", alpha=0.12, interpolate=True)
    a1.set_ylabel("mean D_φ over the batch")
    a1.legend(loc="upper left")
    a1.set_title(f"{run.label}: discriminator scores (last step: D(T) − D(S) = {dt[-1] - ds[-1]:.3g})", pad=14)
    a2.plot(x, acc, color="C0", **mk)
    k = max(1, len(acc) // 20)
    if k > 1:
        a2.plot(x[k - 1:], np.convolve(acc, np.ones(k) / k, mode="valid"), color="C0", lw=2, label=f"mean of {k} steps")
        a2.legend(loc="lower right")
    a2.axhline(0.5, color="0.5", ls=":", lw=1)
    a2.text(x[0], 0.5, "chance", fontsize=7, color="0.4", va="bottom")
    a2.set_ylim(-0.03, 1.03)
    a2.set_ylabel("pairwise accuracy\n(share D(T) > D(S))")
    a3.plot(x, loss, color="k", **mk)
    a3.axhline(math.log(2), color="0.5", ls=":", lw=1)
    a3.text(x[0], math.log(2), "log 2 (D(T) = D(S), q = 1)", fontsize=7, color="0.4", va="bottom")
    a3.set_ylabel("loss q·−log σ(D(T) − D(S))")
    a3.set_xlabel("discriminator optimizer step (cumulative)")
    a3.set_ylim(0, 1.15 * max(math.log(2), float(np.nanmax(loss)) if np.isfinite(loss).any() else 0.0))
    if few:
        a3.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _save(fig, path)


def fig_rmsd_sft_loss(run: Run, path: Path) -> None:
    parts = (("rmsd-sft", "Stage 1: student on the best kept teacher response"),
             ("rmsd-teacher-sft", "the workflow-built teacher's own SFT"))
    have = {n: run.sft_metrics(n) for n, _ in parts}
    if not any(have.values()):
        raise Skip(f"no R-MSD SFT metrics under {run.root} (metrics/rmsd-sft.parquet, "
                   "metrics/rmsd-teacher-sft.parquet)")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, (name, what) in zip(axes, parts):
        rows = have[name]
        if not rows:
            ax.text(0.5, 0.5, f"no metrics/{name}.parquet\n(an external teacher is not trained here)"
                    if "teacher" in name else f"no metrics/{name}.parquet", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
            ax.set_title(what)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        final = _loss_panel(ax, rows)
        ax.set_title(f"{what}\n{len(rows)} steps, loss {rows[0]['loss']:.3f} → {final:.3f}")
    fig.suptitle(f"{run.label}: R-MSD supervised stages")
    fig.tight_layout()
    _save(fig, path)


RMSD_REWARD_PANELS = (("d_term", "d = σ(D_φ(S)) (α)"), ("r_outer", "R_outer (β)"), ("r_task", "R_task (η)"),
                      ("r_content", "R_content (δ)"),
                      ("total", "R = α·d + β·R_outer + η·R_task + δ·R_content"), ("d_score", "raw D_φ(S)"))


def fig_rmsd_reward_terms(run: Run, path: Path) -> None:
    cols = run.columns("rewards")
    terms = [(t, name) for t, name in RMSD_REWARD_PANELS if t in cols]
    if "d_term" not in cols:
        raise Skip("the rewards tables have no R-MSD columns (d_term, r_outer, r_task, r_content): not an R-MSD run")
    sel = ", ".join(f"avg({t}), stddev_samp({t}), count({t})" for t, _ in terms)
    paired = "avg((matched_index IS NOT NULL)::INTEGER)" if "matched_index" in cols else "NULL"
    rows = run.sql("rewards", f"SELECT phase, {paired}, {sel} FROM rewards WHERE d_term IS NOT NULL "
                              "GROUP BY phase ORDER BY phase")
    if not rows:
        raise Skip("no rewards row has an R-MSD d_term")
    phases = [int(r[0]) for r in rows]
    stats = {t: [_mean_sem(*r[2 + 3 * i:5 + 3 * i]) for r in rows] for i, (t, _) in enumerate(terms)}
    plt = _plt()
    steps = run.phase_steps()
    nr, nc = _grid(len(terms), 3)
    fig, axes = plt.subplots(nr, nc, figsize=(3.8 * nc, 2.7 * nr), squeeze=False)
    for ax, (t, name) in zip(axes.flat, terms):
        m = np.array([v[0] for v in stats[t]])
        e = np.array([v[1] for v in stats[t]])
        ax.errorbar(phases, m, yerr=e, marker="o", capsize=3, color="black" if t == "total" else "C0")
        for p, v in zip(phases, m):
            ax.annotate(f"{v:.3f}", (p, v), textcoords="offset points", xytext=(7, 5), fontsize=7, color="0.2",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85})
        ax.set_title(name, weight="bold" if t == "total" else "normal", fontsize=9)
        _phase_axis(ax, phases, steps)
        lo, hi = np.nanmin(m - e), np.nanmax(m + e)
        if t != "d_score" and np.isfinite(lo) and np.isfinite(hi):
            pad = max(0.05, 0.15 * (hi - lo))
            ax.set_ylim(max(-0.02, lo - pad), min(1.02, hi + pad) if hi <= 1 else hi + pad)
    for ax in axes.flat[len(terms):]:
        ax.set_visible(False)
    n = sum(v[2] for v in stats["d_term"])
    share = [r[1] for r in rows if r[1] is not None]
    note = f"; {1 - float(np.mean(share)):.0%} of rollouts without a teacher pair" if share else ""
    fig.suptitle(f"{run.label}: R-MSD Stage-2 reward terms per phase (mean ± s.e.m., {n} rollouts{note})")
    fig.tight_layout()
    _save(fig, path)


# ============================================================================ comparison figures

def fig_compare_reward(runs: list[Run], path: Path) -> None:
    have = []
    for r in runs:
        try:
            have.append((r, *r.reward_stats()))
        except Skip:
            continue
    if len(have) < 2:
        raise Skip(f"fewer than two runs have rewards tables ({', '.join(r.label for r, *_ in have) or 'none'})")
    terms = [t for t in have[0][1] if all(t in h[1] for h in have)]
    plt = _plt()
    nr, nc = _grid(len(terms), 4)
    fig, axes = plt.subplots(nr, nc, figsize=(3.1 * nc, 2.6 * nr), squeeze=False)
    phases_all = sorted({p for _, _, st in have for p in st})
    for ax, t in zip(axes.flat, terms):
        for i, (r, _, st) in enumerate(have):
            ps = sorted(st)
            off = (i - (len(have) - 1) / 2) * 0.05
            ax.errorbar(np.array(ps) + off, [st[p][t][0] for p in ps], yerr=[st[p][t][1] for p in ps], marker="o",
                        capsize=2, label=r.label, color=f"C{i}")
        ax.set_title(t, weight="bold" if t == "total" else "normal")
        ax.set_xticks(phases_all, [f"P{p}" for p in phases_all])
    for ax in axes.flat[len(terms):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(have), bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("reward terms of each phase's rollouts per run (mean ± s.e.m.)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)


def fig_compare_eval(runs: list[Run], path: Path) -> None:
    have = [(r, _eval_points(r)) for r in runs]
    have = [(r, p) for r, p in have if p]
    if len(have) < 2:
        raise Skip(f"fewer than two runs have evaluation summaries ({', '.join(r.label for r, _ in have) or 'none'})")
    keys = sorted({(b, m) for _, pts in have for b, ms in pts.items() for m in ms})
    if len(keys) > 24:
        print(f"[report] compare_eval: {len(keys)} benchmark metrics, drawing the first 24", file=sys.stderr)
        keys = keys[:24]
    plt = _plt()
    nr, nc = _grid(len(keys), 4)
    fig, axes = plt.subplots(nr, nc, figsize=(3.2 * nc, 2.6 * nr), squeeze=False)
    for ax, (b, metric) in zip(axes.flat, keys):
        phases: set[int] = set()
        for i, (r, pts) in enumerate(have):
            d = pts.get(b, {}).get(metric)
            if d:
                ps = sorted(d)
                phases |= set(ps)
                ax.plot(ps, [d[p] for p in ps], marker="o", color=f"C{i}", label=r.label)
        ax.set_title(f"{b}: {metric}", fontsize=9)
        ax.set_xticks(sorted(phases), [("start" if p < 0 else f"P{p}") for p in sorted(phases)])
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=f"C{i}", marker="o", label=r.label) for i, (r, _) in enumerate(have)]
    fig.legend(handles=handles, loc="upper right", ncol=len(have), bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("evaluation per run (percent; start = before phase 0)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)


SINGLE_FNS: dict[str, Callable[[Run, Path], None]] = {
    "reward_terms": fig_reward_terms, "reward_by_task": fig_reward_by_task, "lambda": fig_lambda,
    "train_losses": fig_train_losses, "omega_hist": fig_omega_hist, "judge_fields": fig_judge_fields,
    "logprob_gap": fig_logprob_gap, "eval_metrics": fig_eval_metrics, "kl_gap": fig_kl_gap, "sft_loss": fig_sft_loss,
    "rmsd_pool_quality": fig_rmsd_pool_quality, "rmsd_discriminator": fig_rmsd_discriminator,
    "rmsd_sft_loss": fig_rmsd_sft_loss, "rmsd_reward_terms": fig_rmsd_reward_terms,
}
COMPARE_FNS: dict[str, Callable[[list[Run], Path], None]] = {
    "compare_reward": fig_compare_reward, "compare_eval": fig_compare_eval,
}


# ============================================================================ summary table and HTML

def _tag(phase: int) -> str:
    return "start" if phase < 0 else f"P{phase}"


def summary(run: Run) -> dict[str, str]:
    """Final numbers of one run for the HTML table (strings; '—' where unknown)."""
    out: dict[str, str] = {"results": str(run.root), "recipe": run.recipe() or "—"}
    m = run.metrics()
    out["phases trained"] = str(len({r["phase"] for r in m})) if m else "0"
    out["optimizer steps"] = str(max(int(r["global_step"]) for r in m)) if m else "0"
    out["final λ"] = f"{m[-1]['lambda']:.3g}" if m and m[-1].get("lambda") is not None else "—"
    sft = run.sft_metrics()
    if sft:
        out["SFT loss (first → last step)"] = f"{sft[0]['loss']:.3f} → {sft[-1]['loss']:.3f}"
    try:
        terms, st = run.reward_stats()
        ps = sorted(st)
        for t in ("total", "accuracy", "format"):
            if t in terms:
                out[f"reward {t} (P{ps[0]} → P{ps[-1]})"] = f"{st[ps[0]][t][0]:.3f} → {st[ps[-1]][t][0]:.3f}"
    except Skip:
        pass
    if run.has("judge"):
        try:
            rows = run.sql("judge", "SELECT phase, avg(CASE WHEN answer_correctness = 'correct' THEN 1.0 ELSE 0.0 "
                                    "END) FROM judge GROUP BY phase ORDER BY phase")
            if rows:
                out[f"judge: answer correct (P{rows[0][0]} → P{rows[-1][0]})"] = f"{rows[0][1]:.0%} → {rows[-1][1]:.0%}"
        except Exception as e:  # noqa: BLE001 - an odd judge table never breaks the report
            print(f"[report] {run.label}: judge summary skipped ({type(e).__name__}: {e})", file=sys.stderr)
    if run.has("rollouts") and "trainer_logprob_gap_max" in run.columns("rollouts"):
        gap = run.sql("rollouts", "SELECT max(trainer_logprob_gap_max) FROM rollouts")[0][0]
        if gap is not None:
            out["max engine–trainer log-prob gap"] = f"{gap:.2g}"
    for b, ms in sorted(_eval_points(run).items()):
        for k, d in sorted(ms.items(), key=lambda kv: (kv[0].count("/"), kv[0])):
            if k.split("/")[-1] not in EVAL_HEADLINE:
                continue
            first, last = min(d), max(d)
            out[f"eval {b}: {k} ({_tag(first)} → {_tag(last)})"] = (
                f"{d[first]:.1f} → {d[last]:.1f}" if first != last else f"{d[last]:.1f}")
    out.update(_rmsd_summary(run))
    kl = run.kl_gaps()
    if kl and kl[-1].get("gap_closed") is not None:
        out[f"KL gap closed (after P{kl[-1]['phase']})"] = f"{kl[-1]['gap_closed']:.3f}"
    return out


def _rmsd_summary(run: Run) -> dict[str, str]:
    """R-MSD rows of the final-metrics table (empty for other runs)."""
    out: dict[str, str] = {}
    try:
        if run.has("rmsd_pool"):
            n, kept, tau, inputs, with_kept = run.sql(
                "rmsd_pool", "SELECT count(*), sum(kept::INTEGER), min(tau), count(DISTINCT sample_id), "
                             "count(DISTINCT sample_id) FILTER (WHERE kept) FROM rmsd_pool")[0]
            if n:
                out[f"R-MSD teacher pool kept at τ = {tau:g}"] = (f"{kept / n:.0%} of {n} responses; "
                                                                  f"{with_kept}/{inputs} inputs keep one")
        if run.has("rmsd_discriminator") and {"step", "pair_accuracy"} <= run.columns("rmsd_discriminator"):
            rows = run.sql("rmsd_discriminator", "SELECT pair_accuracy, d_teacher_mean - d_student_mean "
                                                 "FROM rmsd_discriminator WHERE step IS NOT NULL "
                                                 "ORDER BY kind <> 'warmup', phase, step")
            if rows:
                out["discriminator pair accuracy (first → last step)"] = f"{rows[0][0]:.2f} → {rows[-1][0]:.2f}"
                out["discriminator D(T) − D(S) (first → last step)"] = f"{rows[0][1]:.3g} → {rows[-1][1]:.3g}"
    except Exception as e:  # noqa: BLE001 - an odd R-MSD table never breaks the report
        print(f"[report] {run.label}: R-MSD summary skipped ({type(e).__name__}: {e})", file=sys.stderr)
    for name, what in (("rmsd-sft", "R-MSD Stage-1 SFT loss"), ("rmsd-teacher-sft", "R-MSD teacher SFT loss")):
        rows = run.sft_metrics(name)
        if rows:
            out[f"{what} (first → last step)"] = f"{rows[0]['loss']:.3f} → {rows[-1]['loss']:.3f}"
    return out


def write_html(runs: list[Run], drawn: dict[str, str], skipped: dict[str, str], out_dir: Path) -> Path:
    e = html.escape
    sums = [summary(r) for r in runs]
    keys: list[str] = []
    for s in sums:
        keys += [k for k in s if k not in keys]
    table = ["<table><tr><th></th>" + "".join(f"<th>{e(r.label)}</th>" for r in runs) + "</tr>"]
    for k in keys:
        table.append(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{e(s.get(k, '—'))}</td>" for s in sums) + "</tr>")
    table.append("</table>")
    figs = []
    for name, (title, caption) in FIGURES.items():
        if name in drawn:
            figs.append(f'<section id="{name}"><h2>{e(title)}</h2><a href="{e(drawn[name])}">'
                        f'<img src="{e(drawn[name])}" alt="{e(title)}"></a><p class="caption">{e(caption)}</p></section>')
    missing = "".join(f"<li><b>{e(FIGURES[n][0])}</b> (<code>{n}.png</code>): {e(r)}</li>" for n, r in skipped.items())
    title = "visd report: " + ", ".join(r.label for r in runs)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
tr th:first-child {{ background: #f6f6f6; font-weight: normal; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.caption {{ color: #555; font-size: 0.9em; max-width: 60em; }}
section {{ margin-bottom: 2em; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>Runs: {", ".join(f"<b>{e(r.label)}</b> (<code>{e(str(r.root))}</code>)" for r in runs)}.
{"Single-run figures show <b>" + e(runs[0].label) + "</b>." if len(runs) > 1 else ""}</p>
<h2>Final metrics</h2>
{"".join(table)}
{"".join(figs)}
<h2>Not drawn</h2>
{f"<ul>{missing}</ul>" if missing else "<p>Every figure was drawn.</p>"}
</body></html>
"""
    path = out_dir / "index.html"
    write_text(doc, path)
    _readable(path)
    return path


# ============================================================================ entry points

def run(results_dirs: dict[str, str], out_dir: str, placeholders: bool = True,
        figures: Sequence[str] | None = None) -> dict:
    """Draw every figure of the runs ``results_dirs`` (label -> results folder; the first is the main run,
    several = method comparison) into ``out_dir`` as ``<figure>.png`` plus ``index.html``.

    Returns ``{"figures": {name: path}, "skipped": {name: reason}, "html": path}``. With ``placeholders``
    every single-run figure not drawn still gets a PNG that states why (a stable set of files).
    ``figures`` limits the work to those names of :data:`FIGURES` (default: all).
    """
    if not results_dirs:
        raise ValueError("visd report: no results folder given")
    unknown = sorted(set(figures or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"visd report: unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    wanted = set(figures or FIGURES)
    runs = [Run(label, Path(d)) for label, d in results_dirs.items()]
    for r in runs:
        if not r.root.is_dir():
            raise FileNotFoundError(f"visd report: results folder {r.root} (run {r.label!r}) does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, str] = {}
    skipped: dict[str, str] = {}
    todo: list[tuple[str, Callable[[], None]]] = [(n, (lambda f=f, n=n: f(runs[0], out / f"{n}.png")))
                                                  for n, f in SINGLE_FNS.items() if n in wanted]
    if len(runs) > 1:
        todo += [(n, (lambda f=f, n=n: f(runs, out / f"{n}.png"))) for n, f in COMPARE_FNS.items() if n in wanted]
    else:
        for n in COMPARISON:  # a stale comparison of an earlier report would contradict this page
            (out / f"{n}.png").unlink(missing_ok=True)
    for name, draw in todo:
        try:
            draw()
            drawn[name] = f"{name}.png"
            print(f"[report] wrote {out / name}.png", file=sys.stderr)
        except Skip as e:
            skipped[name] = str(e)
            print(f"[report] {name}: not drawn: {e}", file=sys.stderr)
            if placeholders and name in SINGLE_RUN:
                _placeholder(out / f"{name}.png", FIGURES[name][0], str(e))
            elif name in COMPARISON:
                (out / f"{name}.png").unlink(missing_ok=True)
    page = write_html(runs, drawn, skipped, out)
    print(f"[report] {len(drawn)} figures, {len(skipped)} not drawn; open {page}", file=sys.stderr)
    return {"figures": {n: str(out / p) for n, p in drawn.items()}, "skipped": skipped, "html": str(page)}


def _label_of(results: str) -> str:
    """Default label of ``--results``: ``rmsd`` when it holds an R-MSD teacher pool (whose policy loss is
    GRPO's), else the recipe of its metrics, else the folder name."""
    if any(Path(results).glob("rmsd/pool/shard-*.parquet")):
        return "rmsd"
    return Run("", Path(results)).recipe() or Path(results).resolve().name


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Draw the run report: one PNG per figure (" + ", ".join(FIGURES) + ") and index.html "
                     "with captions and a table of final metrics. Figures whose tables are missing are listed "
                     "as not drawn. With --compare the comparison figures overlay every run.")
    p.add_argument("--results", default="results", help="results folder of the main run (default: results)")
    p.add_argument("--label", default=None,
                   help="label of the main run (default: its recipe from the metrics, else the folder name)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                   help="another run to compare, e.g. --compare grpo=results-grpo (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report)")
    p.add_argument("--only", nargs="+", default=None, metavar="FIGURE", choices=list(FIGURES),
                   help="draw only these figures (default: all)")
    p.add_argument("--no-placeholders", action="store_true",
                   help="do not write placeholder PNGs for figures that cannot be drawn")


def main(args: argparse.Namespace) -> int:
    dirs: dict[str, str] = {}
    try:
        dirs[args.label or _label_of(args.results)] = args.results
    except Exception:  # noqa: BLE001 - an unreadable metrics table only loses the default label
        dirs[Path(args.results).resolve().name] = args.results
    for spec in args.compare:
        label, sep, d = spec.partition("=")
        if not sep or not label or not d:
            print(f"visd report: --compare {spec!r} must be LABEL=DIR, e.g. grpo=results-grpo", file=sys.stderr)
            return 2
        if label in dirs:
            print(f"visd report: label {label!r} is used twice; give each run its own label", file=sys.stderr)
            return 2
        dirs[label] = d
    try:
        run(dirs, args.out or str(Path(args.results) / "report"), placeholders=not args.no_placeholders,
            figures=args.only)
    except FileNotFoundError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="visd report")
    configure_parser(parser)
    sys.exit(main(parser.parse_args()))
