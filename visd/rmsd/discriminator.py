"""`visd rmsd-discriminator`: the R-MSD discriminator D_φ — warm-up before RL and online updates per phase.

D_φ is the student architecture (``Qwen2_5_VLForConditionalGeneration``'s decoder, vision tower included)
with a scalar head ``w·h + b`` read at the hidden state ``h`` of the *last token* of [prompt, response]
(:class:`Discriminator`). It is initialised from the Stage-1 SFT student (GAD); the head starts at 0.

Loss (METHODS §3), over (teacher response, student rollout) pairs of the same input, the teacher response
matched to rollout i by ``m(i) ~ p`` (:func:`visd.rmsd.pool.match_index`)::

    L_D = mean_i  q_{m(i)} · −log σ(D_φ(x, T_{m(i)}) − D_φ(x, S_i))      (q = 1 for open-ended pairs)

with −log σ(u) = softplus(−u) (:func:`pairwise_loss`). AdamW, gradient-norm clip.

Schedule in the workflow (curriculum phases P = 0, 1, …)::

    D_warmup = warm-up(D from the Stage-1 student, phase-0 rollouts = SFT-student samples), warmup_epochs
    D_P      = update(D_{P−1}, phase-P rollouts), epochs        (D_{−1} = D_warmup)
    rewards of phase P use D_{P−1} (the discriminator before it has seen phase P's samples, as in GAD)

Each output is a folder: an HF model folder of the backbone (loadable by ``from_pretrained``) plus
``value_head.safetensors``, ``optimizer.pt`` (AdamW moments, so the next phase continues them) and
``visd_discriminator.json`` (phase, steps so far, source hashes). Per-step metrics (loss, mean D of
teacher and student responses, pairwise accuracy) go to ``--metrics``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from visd import config as cfgmod
from visd import train as T
from visd.io import checkpoint_hash, write_json, write_parquet
from visd.rmsd import config as rcfg
from visd.rmsd.pool import load_pool, match_index, pair_weight

HEAD_FILE, OPTIM_FILE, INFO_FILE = "value_head.safetensors", "optimizer.pt", "visd_discriminator.json"


def pairwise_loss(d_teacher: torch.Tensor, d_student: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    r"""Quality-weighted pairwise loss :math:`\frac1B\sum_i q_i\,(-\log\sigma(D_T^{(i)} - D_S^{(i)}))`.

    ``d_teacher``, ``d_student``: [B] scores of the matched pairs; ``q``: [B] weights (None = 1).
    −log σ(u) is computed as softplus(−u) (stable for large |u|).
    """
    if d_teacher.shape != d_student.shape or d_teacher.dim() != 1:
        raise ValueError(f"pairwise_loss: need two [B] tensors, got {tuple(d_teacher.shape)} and {tuple(d_student.shape)}")
    per = F.softplus(-(d_teacher - d_student))
    if q is not None:
        per = per * torch.as_tensor(q, dtype=per.dtype, device=per.device)
    return per.mean()


class Discriminator(nn.Module):
    """Student backbone + scalar head at the last token of [prompt, response]."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        cfg = lm.config
        hidden = getattr(getattr(cfg, "text_config", None), "hidden_size", None) or cfg.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.lm.config

    def forward(self, batch: T.Batch) -> torch.Tensor:
        """D_φ of every row of a :func:`visd.train.collate` batch → [B] float32."""
        inputs = dict(batch.inputs)
        ids = inputs["input_ids"]
        width = batch.n_keep - 1  # completion columns
        cfg = self.lm.config
        vision_ids = torch.tensor([cfg.image_token_id, cfg.video_token_id], device=ids.device)
        completion = torch.zeros_like(ids, dtype=torch.bool)
        completion[:, ids.shape[1] - width:] = True
        stray = completion & torch.isin(ids, vision_ids)  # sampled vision pads are text here (see train.completion_logits)
        if bool(stray.any()):
            inputs["inputs_embeds"] = self.lm.get_input_embeddings()(ids)
            inputs["input_ids"] = ids.masked_fill(stray, 0)
        hidden = self.lm.model(**inputs, use_cache=False)[0]  # [B, L, H]
        last = (ids.shape[1] - width) + batch.mask.sum(1) - 1  # column of the last real token
        h = hidden[torch.arange(ids.shape[0], device=ids.device), last]
        return self.head(h).squeeze(-1).float()


# ============================================================================ save / load

def load(folder: str | os.PathLike) -> tuple[Discriminator, dict | None, dict]:
    """(D, optimizer state or None, info) from a discriminator folder, or a fresh D (zero head) from a plain
    HF student folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    d = Discriminator(T.load_model(folder))
    head, optim, info = folder / HEAD_FILE, folder / OPTIM_FILE, folder / INFO_FILE
    if head.exists():
        d.head.load_state_dict(load_file(str(head)))
    state = torch.load(optim, map_location="cpu", weights_only=False) if optim.exists() else None
    return d, state, (json.loads(info.read_text()) if info.exists() else {})


def save(d: Discriminator, optimizer, src_folder: str | os.PathLike, out: str | os.PathLike, info: dict) -> None:
    """Write the discriminator folder atomically (backbone HF folder + head + optimizer + info)."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.parent / f".{out.name}.d-tmp-{os.getpid()}"
    try:
        T.save_hf_folder(d.lm, src_folder, tmp, {"role": "discriminator_backbone"})
        save_file({k: v.detach().cpu().contiguous() for k, v in d.head.state_dict().items()}, str(tmp / HEAD_FILE))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
        write_json(info, tmp / INFO_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ============================================================================ pairs and the update

def build_pairs(pool: dict, rollouts: Sequence[dict], seed: int, weighting: bool = True) -> tuple[list[dict], int]:
    """(teacher response, student rollout) pairs: rollout i of input x with ``m(i) ~ p`` of x's pool.
    Returns (pairs, number of rollouts skipped because their input has no pool entry or fell back)."""
    pairs, skipped = [], 0
    for r in rollouts:
        e = pool.get(r["sample_id"])
        m = match_index(seed, r["rollout_id"], e.probs) if e is not None and not e.fallback else None
        if m is None:
            skipped += 1
            continue
        pairs.append({"sample_id": r["sample_id"], "rollout_id": r["rollout_id"], "student_ids": list(r["completion_ids"]),
                      "teacher_text": e.responses[m], "matched_index": m, "q": pair_weight(e, m, weighting)})
    return pairs, skipped


def text_ids(tokenizer, text: str) -> list[int]:
    """A teacher response in the student's tokenizer, + ``<|im_end|>`` (as the student would end it)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


@torch.no_grad()
def score(d: Discriminator, prompts: T.Prompts, sample_ids: Sequence[str], completions: Sequence[Sequence[int]],
          pad_id: int, batch_size: int = 16, device="cpu") -> np.ndarray:
    """D_φ(x, y) for every (sample id, completion ids) pair, no gradient → float64 [N]."""
    d.eval()
    out = []
    for i in range(0, len(sample_ids), batch_size):
        b = T.collate([prompts.get(s) for s in sample_ids[i:i + batch_size]], completions[i:i + batch_size], pad_id, d.config)
        out.append(d(T.to_device(b, device)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def train_epochs(d: Discriminator, optimizer, prompts: T.Prompts, pairs: Sequence[dict], tokenizer, cfg: dict,
                 epochs: int, seed: int, phase: int, kind: str, device="cpu", progress: bool = False,
                 step0: int = 0) -> list[dict]:
    """``epochs`` passes over ``pairs`` in seeded order, ``cfg['batch_size']`` pairs per AdamW step."""
    from tqdm import tqdm

    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    teacher_ids = [text_ids(tokenizer, p["teacher_text"]) for p in pairs]
    bs = cfg["batch_size"]
    plan = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, phase, 17, epoch]).permutation(len(pairs)).tolist()
        plan += [order[i:i + bs] for i in range(0, len(order), bs)]
    rows, t0 = [], time.perf_counter()
    d.train()
    for j, idx in enumerate(tqdm(plan, desc=f"discriminator {kind}", unit="step", disable=not progress, file=sys.stderr)):
        ps = [prompts.get(pairs[i]["sample_id"]) for i in idx]
        bt = T.to_device(T.collate(ps, [teacher_ids[i] for i in idx], pad, d.config), device)
        bs_ = T.to_device(T.collate(ps, [pairs[i]["student_ids"] for i in idx], pad, d.config), device)
        q = torch.tensor([pairs[i]["q"] for i in idx], dtype=torch.float32, device=device)
        d_t, d_s = d(bt), d(bs_)
        loss = pairwise_loss(d_t, d_s, q)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(d.parameters(), cfg["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"phase": phase, "kind": kind, "step": step0 + j + 1, "loss": loss.item(),
                     "d_teacher_mean": d_t.mean().item(), "d_student_mean": d_s.mean().item(),
                     "pair_accuracy": (d_t > d_s).float().mean().item(), "q_mean": q.mean().item(),
                     "grad_norm": float(gn), "pairs": len(idx), "elapsed_s": time.perf_counter() - t0})
    d.eval()
    return rows


def run(params: dict, phase: int, samples_path: str, frames_paths: Sequence[str], pool_paths: Sequence[str],
        rollout_paths: Sequence[str], d_in: str, out: str, metrics_path: str | None = None, warmup: bool = False,
        progress: bool = True) -> dict:
    cfg = rcfg.section(params.get("rmsd"))
    dc, weighting = cfg["discriminator"], cfg["pool"]["weighting"]
    prompt_cfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed * 1000003 + 31 * (phase + 2))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = T.load_tokenizer(d_in)
    samples = {r["sample_id"]: r for r in T.read_rows([samples_path])}
    rollouts = T.read_rows(rollout_paths, ["rollout_id", "sample_id", "completion_ids"])
    pool = load_pool(pool_paths)
    pairs, skipped = build_pairs(pool, rollouts, seed, weighting)
    frames = {r["sample_id"]: r for r in T.read_rows(frames_paths) if r["sample_id"] in {p["sample_id"] for p in pairs}}
    prompts = T.Prompts(tokenizer, samples, frames, prompt_cfg)
    d, state, info_in = load(d_in)
    d.to(device)
    optimizer = T.make_optimizer(d, dc["lr"], dc["weight_decay"])
    if state is not None:
        optimizer.load_state_dict(state)  # Adam moments continue from the previous phase
    epochs = dc["warmup_epochs"] if warmup else dc["epochs"]
    kind = "warmup" if warmup else "online"
    step0 = int(info_in.get("steps", 0))
    rows = train_epochs(d, optimizer, prompts, pairs, tokenizer, dc, epochs, seed, phase, kind, device, progress, step0)
    info = {"phase": phase, "kind": kind, "steps": step0 + len(rows), "pairs": len(pairs), "skipped_rollouts": skipped,
            "d_in": checkpoint_hash(d_in), "epochs": epochs,
            "final": rows[-1] if rows else None}
    save(d, optimizer, d_in, out, info)
    if metrics_path:
        write_parquet(pa.Table.from_pylist(rows) if rows else pa.table({"phase": pa.array([], pa.int64())}), metrics_path)
    last = rows[-1] if rows else {}
    print(f"[rmsd-discriminator] phase {phase} {kind}: {len(pairs)} pairs ({skipped} rollouts without a kept teacher "
          f"response), {len(rows)} steps, loss {last.get('loss', float('nan')):.4f}, D(T) {last.get('d_teacher_mean', float('nan')):.3f} "
          f"vs D(S) {last.get('d_student_mean', float('nan')):.3f}; wrote {out}", file=sys.stderr)
    return info


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, rmsd, prompt}) or @file")
    p.add_argument("--phase", type=int, required=True, help="phase whose rollouts train D (warm-up: 0)")
    p.add_argument("--warmup", action="store_true", help="warm-up epochs (rmsd.discriminator.warmup_epochs)")
    p.add_argument("--samples", required=True)
    p.add_argument("--frames", nargs="+", required=True)
    p.add_argument("--pool", nargs="+", required=True, help="results/rmsd/pool/shard-*.parquet")
    p.add_argument("--rollouts", nargs="+", required=True, help="results/rollouts/phase-P/shard-*.parquet")
    p.add_argument("--d-in", required=True, help="previous discriminator folder, or the Stage-1 student (fresh head)")
    p.add_argument("--out", required=True, help="results/rmsd/discriminator/<tag>")
    p.add_argument("--metrics", default=None)
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd rmsd-discriminator: {e}", file=sys.stderr)
        return 2
    run(params, args.phase, args.samples, args.frames, args.pool, args.rollouts, args.d_in, args.out, args.metrics,
        warmup=args.warmup, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="visd rmsd-discriminator")
    configure_parser(_p)
    sys.exit(main(_p.parse_args()))
