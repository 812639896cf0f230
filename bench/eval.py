"""Benchmark of evaluation decoding: the hf engine's batched greedy decoding across requests against one
request at a time, on the same model and questions, side by side in one run.

What ``visd evaluate`` decodes: the benchmark's questions (the eval split, V-STaR chain variants included,
:func:`visd.eval.stage.questions`) rendered through the training prompt pipeline, greedy, ``max_new_tokens``
per answer.

1. ``one at a time`` — ``HFEngine.generate([request], 1, greedy)`` per question (``evaluate.batch_size: 1``);
2. ``batched B``    — ``HFEngine.generate(chunk, 1, greedy)`` for chunks of B questions, which the engine
   decodes as one left-padded batch (``evaluate.batch_size: B``).

The runs alternate (one at a time, batched, one at a time, ...) and each reports its best of ``--repeats``,
so load on a shared machine hits both alike. Also printed: how many completions are token-for-token the
same as one at a time, and the largest behaviour log-prob difference.

Data: by default synthetic clips → frames → a random tiny Qwen2.5-VL (as ``visd build-tiny``), built in a
temporary folder; a random model never emits a stop token, so every answer runs to ``max_new_tokens``.
A trained checkpoint stops at its own length (``--policy`` with ``--samples`` / ``--frames`` of a run).

    python bench/eval.py                                             # random tiny model, 128 new tokens
    python bench/eval.py --policy results/checkpoints/phase-2/policy --samples results/samples.parquet \\
        --frames results/frames/shard-*.parquet --batch-sizes 4 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from visd.config import section
from visd.engines.base import Sampling
from visd.engines.hf import HFEngine
from visd.eval import stage
from visd.io import read_parquet_rows
from visd.rollout import build_requests


def build_data(root: Path, n_videos: int) -> dict:
    """Synthetic samples, frames and a random tiny model (the embedded default's sizes) under ``root``."""
    from visd import frames, tiny
    from visd.data import prepare, synth

    data = {"eval_fraction": 0.5, "synth": {"n_videos": n_videos, "width": 112, "height": 112, "fps": 8,
                                            "min_duration_s": 4, "max_duration_s": 8, "max_shapes": 3}}
    synth.run({"seed": 0, "data": data}, root / "synth", progress=False)
    prepare.run({"data": {"sources": []}}, root / "synth" / "annotations.jsonl", root / "samples.parquet",
                root / "rejects.parquet", progress=False)
    frames.extract_shard(root / "samples.parquet", 0, 1, section("frames", {}), root / "frames.parquet",
                         root / "frames-rejects.parquet", progress=False)
    rows = read_parquet_rows(root / "samples.parquet")
    tiny.build_tiny(root / "model", tiny.corpus_from_samples(rows, section("prompt", {})["system"]),
                    section("model", {})["tiny"], seed=0)
    return {"policy": str(root / "model"), "samples": str(root / "samples.parquet"),
            "frames": [str(root / "frames.parquet")]}


def eval_requests(engine: HFEngine, paths: dict, limit: int | None, mode: str) -> list:
    """The requests ``visd evaluate`` decodes for benchmark ``synth`` (eval split), in its order."""
    bench = stage.benchmark_config({"benchmarks": [{"name": "synth", "limit": limit}]}, "synth")
    chosen = stage.select(read_parquet_rows(paths["samples"]), bench)
    frames = {r["sample_id"]: r for p in paths["frames"] for r in read_parquet_rows(p)}
    pcfg = section("prompt", {"mode": mode})
    reqs = []
    for variant, s in stage.questions(chosen):
        if s["sample_id"] in frames:
            req, _ = build_requests(engine.tokenizer, {s["sample_id"]: s}, [frames[s["sample_id"]]], pcfg)[0]
            req.request_id = f"{s['sample_id']}/{variant}"
            reqs.append(req)
    return reqs


def decode(engine: HFEngine, reqs: list, sampling: Sampling, size: int) -> tuple[float, list]:
    """Seconds and completions of the evaluate loop with ``evaluate.batch_size = size``."""
    engine.batch_size = size
    t0 = time.perf_counter()
    out = []
    for i in range(0, len(reqs), size):
        out += [g[0] for g in engine.generate(reqs[i : i + size], 1, sampling)]
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--policy", help="HF model folder (default: build a random tiny model and synthetic data)")
    ap.add_argument("--samples", help="samples.parquet (with --policy)")
    ap.add_argument("--frames", nargs="+", help="frames shard(s) (with --policy)")
    ap.add_argument("--n-videos", type=int, default=24, help="synthetic videos to build (half of them eval)")
    ap.add_argument("--limit", type=int, default=None, help="benchmark items (a V-STaR chain counts once)")
    ap.add_argument("--mode", choices=["video", "image_list"], default="video")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="128 = the embedded default's evaluate")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each timing (alternating runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.policy:
            if not (args.samples and args.frames):
                ap.error("--policy needs --samples and --frames")
            paths = {"policy": args.policy, "samples": args.samples, "frames": args.frames}
        else:
            paths = build_data(Path(tmp), args.n_videos)
        engine = HFEngine(paths["policy"], dtype=args.dtype, device=args.device)
        reqs = eval_requests(engine, paths, args.limit, args.mode)
        if not reqs:
            print("no eval questions: check --samples / --frames", file=sys.stderr)
            return 2
        sampling = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens, seed=0)
        decode(engine, reqs[:4], sampling, 1)  # warm-up (allocator, kernels)
        decode(engine, reqs[:4], sampling, 4)
        best: dict[int, float] = {}
        outs: dict[int, list] = {}
        for _ in range(args.repeats):
            for size in [1, *args.batch_sizes]:
                dt, outs[size] = decode(engine, reqs, sampling, size)
                best[size] = min(best.get(size, float("inf")), dt)
    n_params = sum(p.numel() for p in engine.model.parameters())
    lens = [len(r.input_ids) for r in reqs]
    ref = outs[1]
    n_tok = sum(len(c.token_ids) for c in ref)
    stops = sum(c.finish_reason == "stop" for c in ref)
    dev = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
           else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"model: {'random tiny' if not args.policy else args.policy} Qwen2.5-VL, {n_params / 1e6:.2f} M parameters; "
          f"device {dev}; {args.dtype}")
    print(f"questions: {len(reqs)} ({args.mode}, prompt {min(lens)}-{max(lens)} tokens), greedy, max {args.max_new_tokens} "
          f"new tokens; one at a time: {n_tok} tokens, {stops} answers stopped, {len(reqs) - stops} cut at the limit; "
          f"best of {args.repeats}\n")
    print("| decoding | seconds | items/s | tokens/s | vs one at a time | same tokens | max abs logprob diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    result = {"questions": len(reqs), "tokens": n_tok, "device": dev, "params_m": round(n_params / 1e6, 3)}
    for size in [1, *args.batch_sizes]:
        got = outs[size]
        same = sum(a.token_ids == b.token_ids for a, b in zip(ref, got))
        diff = max((abs(x - y) for a, b in zip(ref, got) if a.token_ids == b.token_ids
                    for x, y in zip(a.logprobs, b.logprobs)), default=0.0)
        name = "one at a time" if size == 1 else f"batched {size}"
        print(f"| {name} | {best[size]:.2f} | {len(reqs) / best[size]:.2f} | {n_tok / best[size]:,.0f} | "
              f"{best[1] / best[size]:.2f}x | {same}/{len(reqs)} | {diff:.1e} |")
        result[f"items_s_{size}"] = len(reqs) / best[size]
        result[f"speedup_{size}"] = best[1] / best[size]
        result[f"same_{size}"] = same
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
