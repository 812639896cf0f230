"""R-MSD Stage-2 reward mixing R = α·D + β·R_outer + η·R_task + δ·R_content and its group advantages, by hand."""

import math

import pytest

from visd.rmsd import config as rcfg
from visd.rmsd.stage2 import (
    advantages_by_group,
    d_term,
    mix_reward,
    rmsd_rewards_schema,
)


def test_default_weights_are_methods():
    w = rcfg.section({})["reward"]
    assert (w["alpha"], w["beta"], w["eta"], w["delta"]) == (0.4, 0.1, 0.1, 0.4)


def test_mix_by_hand():
    # σ(0) = 0.5: 0.4·0.5 + 0.1·1 + 0.1·1 + 0.4·(1/3) = 0.2 + 0.2 + 0.13333…
    assert mix_reward(d_term(0.0), 1.0, 1.0, 1 / 3) == pytest.approx(0.2 + 0.2 + 0.4 / 3, abs=1e-15)
    assert mix_reward(0.25, 0.0, 0.0, 0.0, alpha=2.0) == 0.5
    assert mix_reward(1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0) == 1.0


def test_d_term():
    assert d_term(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-15)
    assert d_term(-800.0) == pytest.approx(0.0) and d_term(800.0) == 1.0  # no overflow
    assert d_term(-3.5, "raw") == -3.5


def test_group_advantages_by_hand():
    rows = [{"group": "a", "total": t} for t in (0.2, 0.6, 1.0)] + [{"group": "b", "total": t} for t in (0.5, 0.5)] + \
           [{"group": "c", "total": 0.7}]
    advantages_by_group(rows)
    # group a: mean 0.6, unbiased std sqrt(((0.4)^2·2)/2) = 0.4 → (−1, 0, 1)·0.4/(0.4 + 1e-4)
    s = 0.4 / (0.4 + 1e-4)
    assert [r["advantage"] for r in rows[:3]] == pytest.approx([-s, 0.0, s], abs=1e-12)
    assert [r["advantage"] for r in rows[3:]] == [0.0, 0.0, 0.0]  # equal rewards; a group of one


def test_schema_is_a_superset_of_the_reward_stage():
    from visd.reward_stage import rewards_schema

    ours = rmsd_rewards_schema()
    for f in rewards_schema():
        assert ours.field(f.name).type == f.type


def test_schema_section_matches_the_fragment():
    """Once the `rmsd` section is pasted into the workflow schema it must equal visd/rmsd/schema.yaml."""
    from visd import config as cfgmod

    main = cfgmod.load_schema().get("properties", {}).get("rmsd")
    if main is not None:
        assert main == rcfg.fragment()
    with pytest.raises(cfgmod.ConfigError, match="rmsd.pool.kk"):
        rcfg.section({"pool": {"kk": 1}})
