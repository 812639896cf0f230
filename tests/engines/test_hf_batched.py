"""The hf engine's batched greedy decoding across different requests.

Reference: the same requests decoded one at a time (``batch_size=1``, the engine's original loop). The mix
has real synthetic videos with different frame counts in ``video`` and ``image_list`` mode, a frame size
with a non-square grid, a text-only prompt and different questions, so prompt lengths, vision blocks, M-RoPE
ids and rope deltas differ from row to row.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TEST_SAMPLE, test_frames_row
from visd.config import section
from visd.engines.base import Request, Sampling
from visd.engines.hf import HFEngine
from visd.io import read_parquet_rows
from visd.rollout import build_requests

GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=24, seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.train.helpers import build_base

    return build_base(tmp_path_factory.mktemp("batched"), n_videos=4)


@pytest.fixture(scope="module")
def engine(base):
    return HFEngine(base["init"], dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def mix(engine, base):
    samples = {r["sample_id"]: r for r in read_parquet_rows(base["samples"])}
    frames = sorted(read_parquet_rows(base["frames"][0]), key=lambda r: r["sample_id"])
    by_count: dict[int, list[dict]] = {}
    for row in frames:
        by_count.setdefault(len(row["timestamps"]), []).append(row)
    assert len(by_count) > 1, "the synthetic videos should give different frame counts"
    picked = [rows[i] for rows in by_count.values() for i in (0, len(rows) // 2)]
    reqs = []
    for mode, rows in (("video", picked), ("image_list", picked[:3])):
        reqs += [r for r, _ in build_requests(engine.tokenizer, samples, rows, section("prompt", {"mode": mode}))]
    odd = test_frames_row(n=6, h=56, w=84, seed=3)  # 2x3 merged grid, 3 temporal steps
    reqs += [r for r, _ in build_requests(engine.tokenizer, {TEST_SAMPLE["sample_id"]: TEST_SAMPLE}, [odd],
                                          section("prompt", {"mode": "video"}))]
    ids = engine.tokenizer("a text-only prompt", add_special_tokens=False)["input_ids"]
    reqs.append(Request(request_id="text-only", input_ids=ids, mode="image_list", frames=[], timestamps=[],
                        sample_fps=0.0))
    for k, r in enumerate(reqs):
        r.request_id = f"{r.request_id}/{k}"
    assert len({len(r.input_ids) for r in reqs}) >= 5, "prompt lengths should differ"
    return reqs


@pytest.fixture(scope="module")
def reference(engine, mix):
    """Greedy completions of the mix, one request at a time."""
    return one_at_a_time(engine, mix, GREEDY)


def one_at_a_time(engine, reqs, sampling):
    engine.batch_size = 1
    return [engine.generate([r], 1, sampling)[0][0] for r in reqs]


def batched(engine, reqs, sampling, size):
    engine.batch_size = size
    try:
        return [g[0] for g in engine.generate(reqs, 1, sampling)]
    finally:
        engine.batch_size = 1


def assert_same(ref, got):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert (b.request_id, b.index) == (a.request_id, a.index)
        assert b.token_ids == a.token_ids, a.request_id
        assert (b.text, b.finish_reason) == (a.text, a.finish_reason), a.request_id
        # logits agree to float32 rounding (GEMV vs GEMM, masked attention), not bitwise
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [1, 3, 100])
def test_batched_greedy_equals_one_at_a_time(engine, mix, reference, size):
    assert all(len(c.token_ids) == GREEDY.max_new_tokens for c in reference)
    assert_same(reference, batched(engine, mix, GREEDY, size))


def test_rows_that_stop_early_leave_the_batch(engine, mix, reference):
    # a stop token that one row emits early while another row never emits it
    first = [{t: c.token_ids.index(t) for t in set(c.token_ids)} for c in reference]
    stop = next((t for t in sorted({t for f in first for t in f})
                 if min(f.get(t, 99) for f in first) < GREEDY.max_new_tokens // 2 and any(t not in f for f in first)),
                None)
    assert stop is not None
    sampling = Sampling(**{**GREEDY.__dict__, "stop_token_ids": [stop]})
    ref = one_at_a_time(engine, mix, sampling)
    reasons = [c.finish_reason for c in ref]
    assert "stop" in reasons and "length" in reasons
    assert min(len(c.token_ids) for c in ref) < GREEDY.max_new_tokens // 2
    for c in ref:
        assert (c.token_ids[-1] == stop) == (c.finish_reason == "stop")
    for size in (3, len(mix)):
        assert_same(ref, batched(engine, mix, sampling, size))


def test_a_row_does_not_depend_on_its_batch(engine, mix, reference):
    assert_same(reference[:1], engine.generate_batch(mix[:1], GREEDY))
    assert_same(reference[::-1], engine.generate_batch(mix[::-1], GREEDY))
    assert engine.generate_batch([], GREEDY) == []


def test_sampling_is_never_batched_across_requests(engine, mix):
    """Sampled completions keep the per-request path, so batch_size does not change them (bitwise)."""
    s = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=5)
    ref = one_at_a_time(engine, mix[:4], s)
    got = batched(engine, mix[:4], s, 4)
    assert [(c.token_ids, c.logprobs) for c in got] == [(c.token_ids, c.logprobs) for c in ref]
    engine.batch_size = 4
    try:
        groups = engine.generate(mix[:2], 2, GREEDY)  # greedy with n > 1: per request as well
    finally:
        engine.batch_size = 1
    assert [len(g) for g in groups] == [2, 2]


def test_batch_size_is_checked(base):
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(base["init"], dtype="float32", device="cpu", batch_size=0)
