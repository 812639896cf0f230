"""`visd rmsd-pool`'s selection (τ, weighting, first K of a larger pool) against a hand-written reference,
and the R-MSD ablation runner's variant config, summary table and K check against a real responses shard."""

import argparse
import json

import pyarrow as pa
import pytest

from visd import config as cfgmod
from visd.io import write_parquet
from visd.rmsd import ablation
from visd.rmsd.pool import FALLBACK_NO_KEPT, POOL, RESPONSES
from visd.rmsd.selection import select_rows

# two inputs sampled at K = 4: a closed-ended one and an open-ended one
QUALITY = {"mcq-1": [0.0, 1.0, 0.25, 1.0], "open-1": [1.0, 0.0, 1.0, 1.0], "num-1": [0.1, 0.2, 0.9, 0.0]}
CLOSED = {"mcq-1": True, "open-1": False, "num-1": True}


def base_rows():
    rows = []
    for sid, qs in QUALITY.items():
        for k, q in enumerate(qs):
            rows.append({"sample_id": sid, "task_type": "mcq" if CLOSED[sid] else "open", "teacher_id": "t",
                         "sample_index": k, "response": f"{sid}-{k}", "finish_reason": "stop", "n_tokens": 3,
                         "valid": q > 0, "metric": "exact_match", "metric_value": q, "quality": q,
                         "closed": CLOSED[sid], "k": 4, "params_hash": "h"})
    return rows[::-1]  # order must not matter


def reference(qs, closed, tau, weighting):
    """Kept flags and p written out by hand from METHODS §3, independently of visd.rmsd.pool."""
    kept = [q >= tau for q in qs]
    n, total = sum(kept), sum(q for q, k in zip(qs, kept) if k)
    if not n:
        return kept, [0.0] * len(qs)
    if closed and weighting and total > 0:
        return kept, [q / total if k else 0.0 for q, k in zip(qs, kept)]
    return kept, [1.0 / n if k else 0.0 for k in kept]


@pytest.mark.parametrize("k,tau,weighting", [(1, 0.3, True), (2, 0.3, True), (4, 0.3, True), (4, 0.0, True),
                                              (4, 0.5, False), (3, 0.95, True)])
def test_variant_pool_is_the_first_k_refiltered(k, tau, weighting):
    rows, rejects = select_rows(base_rows(), tau, weighting, k=k)
    fallbacks = 0
    for sid, qs in QUALITY.items():
        mine = sorted((r for r in rows if r["sample_id"] == sid), key=lambda r: r["sample_index"])
        assert [r["sample_index"] for r in mine] == list(range(k))
        kept, p = reference(qs[:k], CLOSED[sid], tau, weighting)
        assert [r["kept"] for r in mine] == kept
        assert [r["match_prob"] for r in mine] == pytest.approx(p, abs=1e-12)
        assert all(r["k"] == k and r["tau"] == tau and r["weighting"] == weighting for r in mine)
        if not any(kept):
            fallbacks += 1
            assert {r["fallback"] for r in mine} == {FALLBACK_NO_KEPT}
        else:
            best = max(range(k), key=lambda i: (qs[i] if kept[i] else -1, -i))
            assert [r["best"] for r in mine] == [i == best for i in range(k)]
    assert rejects.counts().get(FALLBACK_NO_KEPT, 0) == fallbacks
    pa.Table.from_pylist(rows, schema=POOL)  # still the pool schema


def test_k1_at_tau_03_falls_back_where_the_first_sample_fails():
    _, rejects = select_rows(base_rows(), 0.3, True, k=1)
    assert rejects.counts() == {FALLBACK_NO_KEPT: 2}  # mcq-1 (q 0.0) and num-1 (q 0.1)


def test_variant_needing_more_samples_than_the_pool_has_names_the_fix():
    with pytest.raises(ValueError, match=r"pool/shard-0.parquet: input \S+ has 4 teacher samples, K = 8 are needed.*rmsd.pool.k ≥ 8"):
        select_rows(base_rows(), 0.3, True, source="pool/shard-0.parquet", k=8)


def test_variant_config_and_lookup():
    base = cfgmod.validate({"rmsd": {"enabled": True}})
    v = ablation.find_variant(base, "unweighted")
    cfg = ablation.variant_config(base, v)
    assert cfg["rmsd"]["pool"] | {"epsilon": 0} == base["rmsd"]["pool"] | {"k": 4, "tau": 0.3, "weighting": False, "epsilon": 0}
    with pytest.raises(cfgmod.ConfigError, match="no variant 'k3'"):
        ablation.find_variant(base, "k3")
    with pytest.raises(cfgmod.ConfigError):
        cfgmod.validate({"rmsd": {"ablation": {"variants": [{"name": "x", "k": 0, "tau": 0.3, "weighting": True}]}}})


def test_summary_table_and_markdown():
    runs = [{"variant": "k1", "k": 1, "tau": 0.3, "weighting": True, "kept_ratio": 0.5, "fallback_inputs": 3,
             "curve": [{"tag": "stage1", "score": 30.0}, {"tag": "phase-0", "score": 34.0}, {"tag": "phase-1", "score": 32.0}],
             "d_gap_final": 0.25, "seconds": 10.0},
            {"variant": "k8", "k": 8, "tau": 0.3, "weighting": False, "kept_ratio": 0.75, "fallback_inputs": 0,
             "curve": [{"tag": "stage1", "score": None}], "d_gap_final": None, "seconds": 1.0}]
    rows = ablation.summarize(runs)
    assert rows[0] | {} == {"variant": "k1", "k": 1, "tau": 0.3, "weighting": True, "kept_ratio": 0.5,
                            "fallback_inputs": 3, "stage1": 30.0, "final": 32.0, "best": 34.0, "d_gap_final": 0.25,
                            "seconds": 10.0}
    assert rows[1]["best"] is None and rows[1]["final"] is None
    md = ablation.markdown(rows).splitlines()
    assert md[2] == "| k1 | 1 | 0.3 | q | 0.50 | 3 | 30.0 | 32.0 | 34.0 | 0.250 |"
    assert md[3].startswith("| k8 | 8 | 0.3 | uniform | 0.75 | 0 | – |")


def test_cli_refuses_a_variant_larger_than_the_pool(tmp_path, capsys):
    shard = tmp_path / "shard-0.parquet"
    write_parquet(pa.Table.from_pylist(base_rows(), schema=RESPONSES), str(shard))
    params = json.dumps(cfgmod.validate({"rmsd": {"enabled": True}}))
    args = argparse.Namespace(action="run", params=params, variant="k8", samples="s", frames=["f"], responses=[str(shard)],
                              student="m", out_root=str(tmp_path / "out"), done=str(tmp_path / "done.json"),
                              progress=False)
    assert ablation.main(args) == 2
    err = capsys.readouterr().err
    assert "needs K = 8" in err and "has 4" in err and str(shard) in err
    assert not (tmp_path / "out").exists()
