"""Which prompts a phase rolls out when rollout.limit caps a shard."""

from visd.rollout import phase_prompts

ROWS = [{"sample_id": f"s{i}"} for i in (3, 0, 4, 1, 2)]


def ids(rows):
    return [r["sample_id"] for r in rows]


def test_no_limit_takes_the_whole_shard_in_order():
    assert ids(phase_prompts(ROWS, None, 7)) == ["s0", "s1", "s2", "s3", "s4"]
    assert ids(phase_prompts(ROWS, 9, 2)) == ["s0", "s1", "s2", "s3", "s4"]


def test_phases_walk_through_the_shard_and_wrap():
    assert ids(phase_prompts(ROWS, 2, 0)) == ["s0", "s1"]
    assert ids(phase_prompts(ROWS, 2, 1)) == ["s2", "s3"]
    assert ids(phase_prompts(ROWS, 2, 2)) == ["s0", "s4"]  # s4, then wrap to s0 (sorted by id)
    seen = {s for p in range(5) for s in ids(phase_prompts(ROWS, 2, p))}
    assert seen == {"s0", "s1", "s2", "s3", "s4"}
