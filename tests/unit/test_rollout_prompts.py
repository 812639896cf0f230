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


def test_without_rotation_every_phase_takes_the_same_prompts():
    for p in range(4):
        assert ids(phase_prompts(ROWS, 2, p, rotate=False)) == ["s0", "s1"]
    assert ids(phase_prompts(ROWS, None, 3, rotate=False)) == ["s0", "s1", "s2", "s3", "s4"]


def test_fixed_prompts_reuse_the_random_stream_so_phases_differ_only_by_policy(tmp_path_factory, tmp_path):
    """rollout.rotate false: every phase rolls out the same prompts with the same sampling stream, so the
    same policy gives the same completions in phase 0 and 2; with rotation the stream moves per phase."""
    import pyarrow.parquet as pq

    from tests.train import helpers as H
    from visd import rollout

    base, _ = H.shared_data(tmp_path_factory)
    out = {}
    for rotate in (False, True):
        params = {"seed": 0, "prompt": H.PROMPT,
                  "rollout": {"limit": 2, "rotate": rotate, "group_size": 2, "max_new_tokens": 6, "record_gap": False}}
        for phase in (0, 2):
            path = tmp_path / f"r-{rotate}-{phase}.parquet"
            rollout.run(base["samples"], base["frames"][0], base["init"], phase, params, str(path),
                        str(tmp_path / f"rej-{rotate}-{phase}.parquet"), progress=False)
            rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["sample_id"], r["index"]))
            out[rotate, phase] = [(r["sample_id"], r["completion_ids"], r["seed"]) for r in rows]
    assert out[False, 0] == out[False, 2] and len(out[False, 0]) == 4
    assert {s for s, _, _ in out[True, 0]} != {s for s, _, _ in out[True, 2]}  # the next prompts
    assert out[True, 0][0][2] != out[True, 2][0][2]  # and a new stream
