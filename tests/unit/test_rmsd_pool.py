"""R-MSD filtering (q ≥ τ), matching probabilities, the all-fail fallback, and the rollout↔teacher pairing."""

import numpy as np
import pyarrow as pa
import pytest

from visd.io import write_parquet
from visd.rmsd.pool import (
    FALLBACK_NO_KEPT,
    POOL,
    filter_and_match,
    load_pool,
    match_index,
    match_probabilities,
    pair_weight,
)


def pool_rows(qs, closed=True):
    return [{"sample_index": k, "quality": q, "closed": closed} for k, q in enumerate(qs)]


def test_closed_ended_p_proportional_to_q_over_kept():
    rows = filter_and_match(pool_rows([0.9, 0.2, 0.6, 0.3]), tau=0.3)
    assert [r["kept"] for r in rows] == [True, False, True, True]
    # kept q: 0.9, 0.6, 0.3 → Σ = 1.8
    assert [r["match_prob"] for r in rows] == pytest.approx([0.5, 0.0, 1 / 3, 1 / 6], abs=1e-15)
    assert [r["best"] for r in rows] == [True, False, False, False]
    assert all(r["fallback"] is None for r in rows)


def test_open_ended_uniform():
    rows = filter_and_match(pool_rows([1.0, 1.0, 1.0, 1.0], closed=False), tau=0.3)
    assert [r["match_prob"] for r in rows] == [0.25] * 4  # 1/K
    rows = filter_and_match(pool_rows([1.0, 0.0, 1.0, 1.0], closed=False), tau=0.3)  # one invalid open response
    assert [r["match_prob"] for r in rows] == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3])


def test_without_weighting_uniform_over_kept():
    rows = filter_and_match(pool_rows([0.9, 0.2, 0.6, 0.3]), tau=0.3, weighting=False)
    assert [r["match_prob"] for r in rows] == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3])


def test_all_fail_falls_back_and_is_excluded():
    rows = filter_and_match(pool_rows([0.1, 0.0, 0.29, 0.2]), tau=0.3)
    assert not any(r["kept"] for r in rows) and not any(r["best"] for r in rows)
    assert [r["match_prob"] for r in rows] == [0.0] * 4
    assert {r["fallback"] for r in rows} == {FALLBACK_NO_KEPT}
    assert match_index(0, "x/p0/g0", [r["match_prob"] for r in rows]) is None


def test_tau_zero_keeps_everything_and_zero_mass_is_uniform():
    rows = filter_and_match(pool_rows([0.0, 0.0]), tau=0.0)
    assert [r["kept"] for r in rows] == [True, True]
    assert [r["match_prob"] for r in rows] == [0.5, 0.5]  # (choice) Σq = 0 over kept → uniform
    assert [r["best"] for r in rows] == [True, False]  # ties → lowest sample index


def test_best_ties_go_to_lowest_index_and_rows_are_sorted():
    rows = filter_and_match(list(reversed(pool_rows([0.5, 0.8, 0.8]))), tau=0.3)
    assert [r["sample_index"] for r in rows] == [0, 1, 2]
    assert [r["best"] for r in rows] == [False, True, False]


def test_match_probabilities_direct():
    assert match_probabilities([0.5, 0.5, 1.0], [True, True, True], closed=True) == [0.25, 0.25, 0.5]
    assert match_probabilities([0.5, 0.5], [False, False], closed=True) == [0.0, 0.0]


def test_match_index_is_deterministic_and_follows_p():
    p = [0.5, 0.0, 1 / 3, 1 / 6]
    draws = [match_index(7, f"s/p0/g{i}", p) for i in range(6000)]
    assert draws == [match_index(7, f"s/p0/g{i}", p) for i in range(6000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[1] == 0.0
    # binomial std ≤ sqrt(0.25/6000) ≈ 0.0065: 4σ tolerance
    assert freq == pytest.approx(p, abs=0.026)


def test_pool_table_roundtrip_and_pair_weight(tmp_path):
    common = {"task_type": "mcq", "teacher_id": "t", "finish_reason": "stop", "n_tokens": 3, "valid": True,
              "metric": "exact_match", "tau": 0.3, "k": 2, "weighting": True, "params_hash": "h"}
    rows = []
    for sid, qs, closed in (("a", [1.0, 0.4], True), ("b", [0.0, 0.1], True), ("c", [1.0, 1.0], False)):
        rows += filter_and_match([{**common, "sample_id": sid, "sample_index": k, "response": f"{sid}{k}",
                                   "metric_value": q, "quality": q, "closed": closed} for k, q in enumerate(qs)], 0.3)
    write_parquet(pa.Table.from_pylist(rows, schema=POOL), tmp_path / "pool.parquet")
    pool = load_pool([str(tmp_path / "pool.parquet")])
    assert pool["a"].best == 0 and pool["a"].probs == pytest.approx([1 / 1.4, 0.4 / 1.4])
    assert pool["b"].best is None and pool["b"].fallback == FALLBACK_NO_KEPT
    assert pair_weight(pool["a"], 1) == 0.4 and pair_weight(pool["a"], 1, weighting=False) == 1.0
    assert pair_weight(pool["c"], 0) == 1.0  # open-ended: q = 1
