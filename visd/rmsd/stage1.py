"""`visd rmsd-sft`: R-MSD Stage 1 — cross-entropy on the best kept teacher response of every input.

Targets: for every training input with a kept teacher response, the ``best`` row of the pool
(:mod:`visd.rmsd.pool`: highest q among the kept, ties to the lowest sample index), tokenised with the
*student's* tokenizer + ``<|im_end|>``; fallback inputs (no kept response) are left out and counted.
``rmsd.sft.epochs`` passes in a seeded order, ``batch_size`` inputs per AdamW step, cosine schedule with
``warmup_steps``, token-mean cross-entropy (:func:`visd.losses.sft_cross_entropy`), gradient-norm clip 1.0
— the trainer's batching and M-RoPE positions (:func:`visd.train.collate`). The output is an HF folder:
the start policy of phase 0 and the frozen KL reference of Stage 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from visd import config as cfgmod
from visd import losses
from visd import train as T
from visd.io import checkpoint_hash, write_parquet
from visd.rmsd import config as rcfg
from visd.rmsd.discriminator import text_ids
from visd.rmsd.pool import load_pool


def sft_targets(pool: dict) -> tuple[dict[str, str], list[str]]:
    """(sample id → best kept response, sample ids that fell back)."""
    targets, fallbacks = {}, []
    for sid, e in pool.items():
        if e.best is None:
            fallbacks.append(sid)
        else:
            targets[sid] = e.responses[e.best]
    return targets, sorted(fallbacks)


def run(params: dict, samples_path: str, frames_paths: Sequence[str], pool_paths: Sequence[str], policy_in: str,
        out: str, metrics_path: str | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    sc = rcfg.section(params.get("rmsd"))["sft"]
    prompt_cfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed * 1000003 + 101)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = T.load_tokenizer(policy_in)
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    samples = {r["sample_id"]: r for r in T.read_rows([samples_path])}
    targets, fallbacks = sft_targets(load_pool(pool_paths))
    ids = sorted(s for s in targets if samples[s]["split"] == "train")
    if not ids:
        raise SystemExit(f"visd rmsd-sft: no training input has a kept teacher response in {list(pool_paths)} "
                         f"({len(fallbacks)} fell back); lower rmsd.pool.tau or raise rmsd.pool.k")
    frames = {r["sample_id"]: r for r in T.read_rows(frames_paths) if r["sample_id"] in set(ids)}
    prompts = T.Prompts(tokenizer, samples, frames, prompt_cfg, cache_size=len(ids) + 1)
    comps = {s: text_ids(tokenizer, targets[s]) for s in ids}
    bs = min(sc["batch_size"], len(ids))
    plan = []
    for epoch in range(sc["epochs"]):
        order = np.random.default_rng([seed, 23, epoch]).permutation(len(ids)).tolist()
        plan += [order[i:i + bs] for i in range(0, len(order), bs)]
    model = T.load_model(policy_in).to(device)
    model.config.use_cache = False
    model.train()
    optimizer = T.make_optimizer(model, sc["lr"], weight_decay=0.0)
    rows, t0 = [], time.perf_counter()
    for step, idx in enumerate(tqdm(plan, desc="rmsd stage-1 sft", unit="step", disable=not progress, file=sys.stderr)):
        batch = T.to_device(T.collate([prompts.get(ids[i]) for i in idx], [comps[ids[i]] for i in idx], pad,
                                      model.config), device)
        lr = T.lr_at(step, sc["lr"], sc["warmup_steps"], len(plan))
        T.set_lr(optimizer, lr)
        loss = losses.sft_cross_entropy(T.completion_logits(model, batch), batch.tokens, batch.mask)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": float(gn), "examples": len(idx),
                     "elapsed_s": time.perf_counter() - t0})
    model.eval()
    info = {"role": "rmsd_stage1_sft", "global_step": 0, "steps": len(plan), "inputs": len(ids),
            "fallback_inputs": len(fallbacks), "policy_in": checkpoint_hash(policy_in),
            "final_loss": rows[-1]["loss"] if rows else None, "seconds": round(time.perf_counter() - t0, 1)}
    T.save_hf_folder(model, policy_in, out, info)
    if metrics_path:
        write_parquet(pa.Table.from_pylist(rows), metrics_path)
    print(f"[rmsd-sft] {len(plan)} steps on {len(ids)} inputs ({len(fallbacks)} fell back, excluded), loss "
          f"{rows[0]['loss']:.3f} → {rows[-1]['loss']:.3f}; wrote {out}", file=sys.stderr)
    return info


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, rmsd.sft, prompt}) or @file")
    p.add_argument("--samples", required=True)
    p.add_argument("--frames", nargs="+", required=True)
    p.add_argument("--pool", nargs="+", required=True, help="results/rmsd/pool/shard-*.parquet")
    p.add_argument("--policy-in", required=True, help="the student before Stage 1 (models/sft or models/init)")
    p.add_argument("--out", required=True, help="results/models/rmsd-sft")
    p.add_argument("--metrics", default=None)
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rmsd-sft: {e}", file=sys.stderr)
        return 2
    run(params, args.samples, args.frames, args.pool, args.policy_in, args.out, args.metrics,
        progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="visd rmsd-sft")
    configure_parser(_p)
    sys.exit(main(_p.parse_args()))
