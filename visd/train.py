"""`visd train`: one curriculum phase of VISD / GRPO / OPSD / SFT, under ``accelerate launch``.

The algorithm (METHODS §1, offline form), top to bottom in this file:

1. Read the phase's cached tables: rollouts (completion ids and behaviour log-probs log π_old of the
   policy that ended phase P−1), rewards (group advantages A_i), and — VISD / OPSD — the teacher cache
   (per completion token: top-K ids and logits of the EMA teacher under its hidden hint, the logit of
   the sampled token, the full-vocabulary logsumexp).
2. Order the groups (= prompts) by a seeded permutation per (seed, phase, epoch); one optimizer step
   takes ``prompts_per_step`` groups, i.e. ``prompts_per_step × G`` rollouts, in micro-batches of
   ``micro_batch`` rollouts (gradient accumulation), split over the data-parallel processes. A phase is
   ``ceil(groups / prompts_per_step) · epochs`` steps, or ``curriculum.steps_per_phase`` (data cycled).
3. For every micro-batch the student logits z^S are computed live on [student prompt + completion],
   with the reference 3-D M-RoPE positions (:mod:`visd.positions`, the same ids the rollout engine and
   the teacher stage used, so log π_θ here equals the engine's log π_old before the first update).
4. The recipe's loss (global step s, 1-based, continues across phases):

   ``grpo``  Â_{i,t} = A_i;                              L = PPO-clip(log π_θ, log π_old, Â, ε)
   ``visd``  ω = decoupled_weights_cached(teacher cache, sg[z^S], v, A, λ(s));  Â = A·ω;  L = PPO-clip
             λ(s) = λ0 (T_a − (s−1)) / T_a for s ≤ T_a, else 0 (then ω ≡ 1: plain GRPO)
   ``opsd``  L = JSD_β(p_T ‖ p_S) on the teacher's top-K support (loss ``jsd``), or the sampled-token
             loss −mean sg[log p_T − log p_S] log p_S (``sampled_token``); p_T from the cache
             (teacher ``ema`` / ``frozen``) or a no-grad forward of the current weights on the
             teacher view (``live``)
   ``sft``   L = cross-entropy of the sample's reference reasoning (student view), one per group
   plus ``kl_coef · KL_k3(π_θ ‖ π_ref)`` when ``kl_coef > 0`` (reference log-probs from ``--reference``,
   the teacher cache's ``ref_logprob``, or the rewards table's ``ref_logprob`` — R-MSD caches them there).
5. AdamW, cosine schedule with linear warm-up over the run's total steps, gradient-norm clipping.
6. EMA teacher θ_T ← d·θ_T + (1−d)·θ after every optimizer step while the teacher is on
   (``visd`` while λ(s) > 0; ``opsd`` with teacher ``ema``).

Losses are normalised over the *global* optimizer batch exactly as the loss functions define them
(PPO / KL: token mean per sequence, then mean over sequences; JSD / sampled-token / CE: mean over
tokens): a micro-batch's loss is weighted by its share of the step's sequences (or tokens) and by the
world size (DDP and FSDP average gradients), so 1 process and N processes give the same update.

Outputs (``--out-dir checkpoints/phase-P``)::

    trainer_state/latest.json         {"dir": "step-000012", "phase_step": 12, "global_step": 40, ...}
    trainer_state/step-000012/        accelerate save_state (model.safetensors, optimizer.bin,
                                      random_states_<rank>.pkl) + teacher.safetensors (EMA) +
                                      trainer.json (position, fingerprint) + metrics.parquet;
                                      sharded runs (train.sharding, visd.sharding): sharded/
                                      (torch.distributed.checkpoint: model, optimizer, teacher)
                                      + random_states_<rank>.pkl instead of the first four
    teacher/                          HF folder of the EMA teacher (+ tokenizer files)
    policy/                           HF folder of the policy, written last and atomically;
                                      visd_train.json holds phase, global_step, recipe, hashes

Rerunning the same command after a kill resumes from ``trainer_state/latest.json`` (same fingerprint:
config, phase, inputs) and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from visd import config as cfgmod
from visd import losses, sharding
from visd.io import (
    checkpoint_hash,
    params_hash,
    write_json,
    write_parquet,
)

RECIPES = ("visd", "grpo", "opsd", "sft")
STATE_DIR, POLICY_DIR, TEACHER_DIR = "trainer_state", "policy", "teacher"
TRAIN_INFO = "visd_train.json"  # written into every HF folder the trainer saves
WEIGHT_SUFFIXES = (".safetensors", ".bin")


# ============================================================================ model, tokenizer, schedule

def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``Qwen2_5_VLForConditionalGeneration`` from an HF folder (float32 master weights for training)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=dtype)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of the ``step``-th optimizer step (0-based): linear warm-up from 0, then cosine to 0.

    Identical to ``transformers.get_cosine_schedule_with_warmup`` (one half cosine): a pure function of
    the global step, so the schedule resumes and continues across phases without scheduler state.
    """
    if step < warmup_steps:
        return lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over every trainable parameter; no decay on biases and norm weights (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def trainer_info(folder: str | os.PathLike) -> dict:
    """``visd_train.json`` of a checkpoint folder ({} for a model the trainer did not write, e.g. init)."""
    p = Path(folder) / TRAIN_INFO
    return json.loads(p.read_text()) if p.exists() else {}


# ============================================================================ prompts and batches

class Prompts:
    """Rendered prompts (:func:`visd.prompts.render`: token ids + vision tensors), built on demand and
    kept in a small LRU cache (a video prompt holds its pixels, so not every prompt stays in memory)."""

    def __init__(self, tokenizer, samples: dict[str, dict], frames: dict[str, dict], prompt_cfg: dict,
                 cache_size: int = 256):
        self.tokenizer, self.samples, self.frames, self.cfg = tokenizer, samples, frames, prompt_cfg
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    def get(self, sample_id: str, view: str = "student", hint: str | None = None) -> dict:
        """``sample_id``'s prompt in ``view`` (``hint``: the teacher's hint text, None = the default hint)."""
        from visd.prompts import render

        key = (sample_id, view, hint)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if sample_id not in self.frames:
            raise KeyError(f"sample {sample_id}: no frames row in the --frames shards; pass every frames shard")
        r = render(self.tokenizer, self.samples[sample_id], self.frames[sample_id], self.cfg["mode"],
                   self.cfg["system"], view=view, hint=hint)
        self.cache[key] = r
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return r


@dataclass
class Batch:
    """Rows = [left-padded prompt | completion | right padding]; every prompt ends at column ``Lp``, so the
    logits predicting completion token t sit at column Lp − 1 + t for every row (``logits_to_keep``)."""

    inputs: dict  # forward kwargs: input_ids, attention_mask, position_ids, vision tensors
    tokens: torch.Tensor  # [B, T] completion ids (pad id where masked)
    mask: torch.Tensor  # [B, T] bool, completion tokens (up to and including EOS)
    n_keep: int  # T + 1


def collate(prompts: Sequence[dict], completions: Sequence[Sequence[int]], pad_id: int, model_config) -> Batch:
    """Batch ``prompts[i]`` (rendered) + ``completions[i]`` with reference M-RoPE positions."""
    from visd.positions import rope_index_for

    B = len(prompts)
    lp = [int(p["input_ids"].shape[1]) for p in prompts]
    lc = [len(c) for c in completions]
    Lp, T = max(lp), max(max(lc), 1)
    ids = torch.full((B, Lp + T), pad_id, dtype=torch.long)
    att = torch.zeros((B, Lp + T), dtype=torch.long)
    mm = torch.zeros((B, Lp + T), dtype=torch.int32)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        s = Lp - lp[b]
        ids[b, s:Lp] = p["input_ids"][0]
        mm[b, s:Lp] = p["mm_token_type_ids"][0]
        att[b, s:Lp + lc[b]] = 1
        if lc[b]:
            ids[b, Lp:Lp + lc[b]] = torch.as_tensor(c, dtype=torch.long)
            tokens[b, :lc[b]] = ids[b, Lp:Lp + lc[b]]
            mask[b, :lc[b]] = True
    vision: dict[str, Any] = {}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [p[key] for p in prompts if p.get(key) is not None]
        if parts:
            vision[key] = torch.cat(parts, 0)
    spg = [float(v) for p in prompts if p.get("second_per_grid_ts") is not None
           for v in torch.as_tensor(p["second_per_grid_ts"]).reshape(-1).tolist()]
    if spg:
        vision["second_per_grid_ts"] = torch.tensor(spg)
    pos, _ = rope_index_for(model_config, ids, image_grid_thw=vision.get("image_grid_thw"),
                            video_grid_thw=vision.get("video_grid_thw"),
                            second_per_grid_ts=vision.get("second_per_grid_ts"), mm_token_type_ids=mm,
                            attention_mask=att)
    inputs = {"input_ids": ids, "attention_mask": att, "position_ids": pos, **vision}
    return Batch(inputs=inputs, tokens=tokens, mask=mask, n_keep=T + 1)


def to_device(batch: Batch, device, pixel_dtype=None) -> Batch:
    inputs = {}
    for k, v in batch.inputs.items():
        v = v.to(device)
        if k.startswith("pixel") and pixel_dtype is not None:
            v = v.to(pixel_dtype)
        inputs[k] = v
    return Batch(inputs, batch.tokens.to(device), batch.mask.to(device), batch.n_keep)


def completion_logits(model, batch: Batch) -> torch.Tensor:
    """Float32 logits z [B, T, V]; z[b, t] predicts completion token t of row b.

    A sampled completion may contain an image / video pad token (a random or weak policy samples any
    id). The engine fed it as text (an embedding row, no pixels); transformers would count it as a vision
    placeholder. Then the embeddings are looked up here and the placeholder mask is built from ids with
    the completion's vision pads replaced, so the forward sees exactly what the engine saw.
    """
    inputs = batch.inputs
    ids = inputs["input_ids"]
    cfg = _unwrap(model).config
    vision_ids = torch.tensor([cfg.image_token_id, cfg.video_token_id], device=ids.device)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, ids.shape[1] - (batch.n_keep - 1):] = True
    stray = completion & torch.isin(ids, vision_ids)
    if bool(stray.any()):
        if hasattr(model, "unshard"):  # FSDP2: the embedding is sharded outside the root forward
            model.unshard()
        embeds = _unwrap(model).get_input_embeddings()(ids)
        inputs = {**inputs, "input_ids": ids.masked_fill(stray, 0), "inputs_embeds": embeds}
    out = model(**inputs, logits_to_keep=batch.n_keep, use_cache=False)
    return out.logits[:, :-1].float()


def _unwrap(model):
    return getattr(model, "module", model)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[v] [B, T]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ============================================================================ phase data

@dataclass
class Rollout:
    rollout_id: str
    sample_id: str
    group: str
    index: int
    completion_ids: list[int]
    old_logp: list[float]  # behaviour log-probs (log π_old); empty for SFT examples
    reward: float = 0.0
    advantage: float = 0.0
    teacher: Any = None  # visd.teacher.TeacherTokens or None
    hint: str | None = None  # teacher-view hint (opsd live)
    ref_logprob: list[float] | None = None  # log π_ref per completion token, cached in the rewards table (R-MSD)


def read_rows(paths: Iterable[str], columns: list[str] | None = None) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows.extend(pq.read_table(p, columns=columns).to_pylist())
    return rows


def load_groups(rollout_paths: Sequence[str], reward_paths: Sequence[str]) -> dict[str, list[Rollout]]:
    """Rollouts joined with their rewards, grouped by prompt (group-contiguous, sorted by index)."""
    has_ref = bool(reward_paths) and all("ref_logprob" in pq.read_schema(p).names for p in reward_paths)
    rewards = {r["rollout_id"]: r for r in read_rows(reward_paths, ["rollout_id", "total", "advantage",
                                                                    *(["ref_logprob"] if has_ref else [])])}
    groups: dict[str, list[Rollout]] = {}
    cols = ["rollout_id", "sample_id", "group", "index", "completion_ids", "behaviour_logprobs"]
    for p in rollout_paths:
        for r in pq.read_table(p, columns=cols).to_pylist():
            rw = rewards.get(r["rollout_id"])
            if rw is None:
                raise SystemExit(f"visd train: rollout {r['rollout_id']} of {p} has no row in the rewards shards "
                                 f"{list(reward_paths)}; pass the rewards of every rollout shard of the phase")
            ids, lp = list(r["completion_ids"] or []), list(r["behaviour_logprobs"] or [])
            if len(ids) != len(lp):
                raise SystemExit(f"visd train: rollout {r['rollout_id']} of {p}: {len(ids)} completion ids but "
                                 f"{len(lp)} behaviour_logprobs; rerun the rollout stage")
            groups.setdefault(r["group"], []).append(
                Rollout(r["rollout_id"], r["sample_id"], r["group"], int(r["index"]), ids, lp,
                        float(rw["total"]), float(rw["advantage"]), ref_logprob=rw.get("ref_logprob")))
    return {g: sorted(v, key=lambda x: x.index) for g, v in sorted(groups.items())}


def sft_groups(sample_ids: Iterable[str], samples: dict[str, dict], tokenizer) -> dict[str, list[Rollout]]:
    """One example per prompt for the ``sft`` recipe: the sample's reference reasoning + ``<|im_end|>``."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = {}
    for sid in sorted(set(sample_ids)):
        ref = samples[sid].get("reference") or ""
        if not ref:
            raise SystemExit(f"visd train: sample {sid} has no `reference`; the sft recipe needs reference reasoning")
        ids = list(tokenizer(ref, add_special_tokens=False)["input_ids"]) + [eos]
        out[sid] = [Rollout(f"{sid}/sft", sid, sid, 0, ids, [])]
    return out


def step_plan(group_ids: Sequence[str], prompts_per_step: int, epochs: int, seed: int, phase: int,
              steps: int | None = None) -> list[list[str]]:
    """Groups of each optimizer step, from a seeded permutation of the groups per (seed, phase, epoch).

    ``steps`` None: ``epochs`` passes, each cut into ``prompts_per_step`` chunks (the last chunk of an
    epoch may be smaller): ``ceil(n_groups / prompts_per_step) · epochs`` steps. ``steps`` = N
    (``curriculum.steps_per_phase``): the permutations of epochs 0, 1, 2 … are concatenated (the data is
    cycled) and cut into N full chunks.
    """
    perm = lambda epoch: [group_ids[j] for j in np.random.default_rng([seed, phase, epoch]).permutation(len(group_ids))]
    if steps is None:
        out = []
        for epoch in range(epochs):
            order = perm(epoch)
            out += [order[i:i + prompts_per_step] for i in range(0, len(order), prompts_per_step)]
        return out
    stream, epoch = [], 0
    while len(stream) < steps * prompts_per_step:
        stream += perm(epoch)
        epoch += 1
    return [stream[i * prompts_per_step:(i + 1) * prompts_per_step] for i in range(steps)]


def shard_for_rank(items: list, rank: int, world: int) -> list:
    """Contiguous share of one process (sizes differ by at most one)."""
    n = len(items)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return items[lo:hi]


# ============================================================================ the loss of one micro-batch

# Fixed bins of the per-step ω histogram (metrics column ``omega_hist``, drawn by ``visd report``): a list
# of len(OMEGA_HIST_EDGES) + 1 token counts; entry 0 counts ω < 0.5, entry i (1 ≤ i ≤ 200) counts
# EDGES[i−1] ≤ ω < EDGES[i] (width 0.005), the last entry counts ω ≥ 1.5. With ε_w = 0.2 and λ ≤ 0.5,
# ω lies in [0.9, 1.1] (40 bins); ω = 1 exactly (A = 0 or λ = 0) falls in the bin [1.0, 1.005).
OMEGA_HIST_EDGES: tuple[float, ...] = tuple(round(0.5 + 0.005 * i, 3) for i in range(201))


def omega_histogram(omega: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Token counts of ω over the masked (completion) tokens in the bins of :data:`OMEGA_HIST_EDGES`."""
    vals = omega.detach()[mask.bool()].float()
    edges = torch.tensor(OMEGA_HIST_EDGES, dtype=torch.float32, device=vals.device)
    idx = torch.bucketize(vals, edges, right=True)  # EDGES[i-1] <= ω < EDGES[i] -> i
    return torch.bincount(idx, minlength=len(OMEGA_HIST_EDGES) + 1).cpu().numpy().astype(np.int64)


@dataclass
class StepStats:
    """Sums, mins, maxes and histograms of one optimizer step, reduced over micro-batches and processes."""

    sums: dict = field(default_factory=dict)
    mins: dict = field(default_factory=dict)
    maxs: dict = field(default_factory=dict)
    hists: dict = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def add_hist(self, name: str, counts: np.ndarray) -> None:
        self.hists[name] = self.hists[name] + counts if name in self.hists else np.asarray(counts, dtype=np.int64)

    def extreme(self, name: str, lo: float, hi: float) -> None:
        self.mins[name] = min(self.mins.get(name, math.inf), float(lo))
        self.maxs[name] = max(self.maxs.get(name, -math.inf), float(hi))

    def reduce(self, accelerator) -> None:
        if accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        for d, op, fill in ((self.sums, dist.ReduceOp.SUM, 0.0), (self.mins, dist.ReduceOp.MIN, math.inf),
                            (self.maxs, dist.ReduceOp.MAX, -math.inf)):
            keys = sorted(KNOWN_STATS if d is self.sums else KNOWN_EXTREMES)
            t = torch.tensor([d.get(k, fill) for k in keys], dtype=torch.float64, device=accelerator.device)
            dist.all_reduce(t, op=op)
            d.clear()
            d.update({k: v for k, v in zip(keys, t.tolist()) if v not in (math.inf, -math.inf)})
        for name, size in KNOWN_HISTS.items():  # every process joins, with zeros where it has none
            h = torch.as_tensor(self.hists.get(name, np.zeros(size, dtype=np.int64)), dtype=torch.int64,
                                device=accelerator.device)
            dist.all_reduce(h, op=dist.ReduceOp.SUM)
            self.hists[name] = h.cpu().numpy()


KNOWN_STATS = ("loss", "pg_loss", "jsd_loss", "sampled_token_loss", "sft_loss", "kl", "n_seq", "n_tok",
               "reward_sum", "adv_sum", "adv_abs_sum", "omega_sum", "omega_changed", "ratio_sum", "ratio_clipped",
               "ratio_n", "omega_n")
KNOWN_EXTREMES = ("omega", "ratio")
KNOWN_HISTS = {"omega": len(OMEGA_HIST_EDGES) + 1}


def micro_batch_loss(recipe: str, cfg: dict, logits: torch.Tensor, batch: Batch, rollouts: Sequence[Rollout],
                     lam: float, norm: dict, stats: StepStats, weight: float = 1.0,
                     teacher_logits: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """The recipe's loss of one micro-batch, scaled to its share of the global step (``norm``: the step's
    sequence and token counts and the world size); ``weight`` = 0 for a padding micro-batch."""
    device = logits.device
    mask, tokens = batch.mask, batch.tokens
    n_seq = int((mask.sum(1) > 0).sum())
    n_tok = int(mask.sum())
    w_seq = weight * n_seq / max(1, norm["n_seq"]) * norm["world"]
    w_tok = weight * n_tok / max(1, norm["n_tok"]) * norm["world"]
    logp = token_logprobs(logits, tokens)
    total = logits.new_zeros(())

    if recipe in ("grpo", "visd"):
        old_logp = pad_2d([r.old_logp for r in rollouts], mask.shape, 0.0, torch.float32, device)
        adv, omega = advantages_and_omega(recipe, cfg, logits, batch, rollouts, lam)
        token_adv = adv[:, None] * omega  # Â_{i,t} = A_i · ω_{i,t}
        pg = losses.ppo_clip_loss(logp, old_logp, token_adv, mask, eps=cfg["ppo_eps"])
        total = total + w_seq * pg
        if weight:
            stats.add("pg_loss", w_seq / norm["world"] * pg.item())
            o, r = losses.omega_stats(omega, mask), losses.ratio_stats(logp, old_logp, mask, eps=cfg["ppo_eps"])
            if o["n_tokens"]:
                stats.add("omega_sum", o["mean"] * o["n_tokens"])
                stats.add("omega_changed", o["frac_changed"] * o["n_tokens"])
                stats.add("omega_n", o["n_tokens"])
                stats.extreme("omega", o["min"], o["max"])
                stats.add_hist("omega", omega_histogram(omega, mask))
            if r["n_tokens"]:
                stats.add("ratio_sum", r["mean"] * r["n_tokens"])
                stats.add("ratio_clipped", r["clip_frac"] * r["n_tokens"])
                stats.add("ratio_n", r["n_tokens"])
                stats.extreme("ratio", r["min"], r["max"])
    elif recipe == "opsd":
        o = cfg["opsd"]
        if o["loss"] == "jsd":
            if teacher_logits is not None:  # live teacher: full-vocabulary logits
                jsd = losses.generalized_jsd(logits, teacher_logits, mask, beta=o["beta"], top_k=o["top_k"],
                                             clip=o["clip"])
            else:
                t = teacher_tensors(rollouts, mask.shape, device)
                k = t["top_ids"].shape[-1] if o["top_k"] is None else min(o["top_k"], t["top_ids"].shape[-1])
                jsd = losses.generalized_jsd_cached(logits, t["top_ids"], t["top_logits"], mask, beta=o["beta"],
                                                    top_k=k, clip=o["clip"])
            total = total + w_tok * jsd
            if weight:
                stats.add("jsd_loss", w_tok / norm["world"] * jsd.item())
        else:
            if teacher_logits is not None:
                t_logp = token_logprobs(teacher_logits, tokens)
            else:
                t = teacher_tensors(rollouts, mask.shape, device)
                t_logp = t["token_logit"] - t["logsumexp"]
            st = losses.opsd_sampled_token_loss(logp, t_logp, mask)
            total = total + w_tok * st
            if weight:
                stats.add("sampled_token_loss", w_tok / norm["world"] * st.item())
    elif recipe == "sft":
        ce = losses.sft_cross_entropy(logits, tokens, mask)
        total = total + w_tok * ce
        if weight:
            stats.add("sft_loss", w_tok / norm["world"] * ce.item())
    else:
        raise ValueError(f"train.recipe {recipe!r} is unknown; use one of {RECIPES}")

    if cfg["kl_coef"] > 0 and recipe != "sft":
        if ref_logp is None:
            ref_logp = pad_2d([r.ref_logprob if r.ref_logprob is not None
                               else r.teacher.ref_logprob if r.teacher is not None and r.teacher.ref_logprob is not None
                               else _missing_ref(r) for r in rollouts], mask.shape, 0.0, torch.float32, device)
        kl = losses.kl_to_reference(logp, ref_logp, mask)
        total = total + w_seq * cfg["kl_coef"] * kl
        if weight:
            stats.add("kl", w_seq / norm["world"] * kl.item())
    if weight:
        stats.add("loss", total.item() / norm["world"])
        stats.add("n_seq", n_seq)
        stats.add("n_tok", n_tok)
        stats.add("reward_sum", sum(r.reward for r in rollouts))
        stats.add("adv_sum", sum(r.advantage for r in rollouts))
        stats.add("adv_abs_sum", sum(abs(r.advantage) for r in rollouts))
    return total


def advantages_and_omega(recipe: str, cfg: dict, logits: torch.Tensor, batch: Batch, rollouts: Sequence[Rollout],
                         lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B] and ω [B, T] (METHODS §1.6–1.10): ω from the cached teacher top-K and the detached student
    logits, ``decoupled_weights_cached``; ω ≡ 1 for ``grpo`` and whenever λ = 0."""
    adv = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32, device=logits.device)
    if recipe != "visd" or lam <= 0:
        return adv, torch.ones(batch.tokens.shape, dtype=torch.float32, device=logits.device)
    t = teacher_tensors(rollouts, batch.mask.shape, logits.device)
    omega = losses.decoupled_weights_cached(t["top_ids"], t["top_logits"], t["token_logit"], t["logsumexp"],
                                            logits.detach(), batch.tokens, adv, lam, gamma=cfg["gamma"],
                                            clip=cfg["clip_w"], top_k=cfg["top_k"])
    return adv, omega


def _missing_ref(r: Rollout):
    raise SystemExit(f"visd train: train.kl_coef > 0 but rollout {r.rollout_id} has no reference log-probs: pass "
                     "--reference DIR, a teacher cache with ref_logprob, or rewards with ref_logprob (R-MSD)")


def pad_2d(rows: Sequence[Sequence[float]], shape, fill, dtype, device) -> torch.Tensor:
    out = torch.full(tuple(shape), fill, dtype=dtype)
    for b, r in enumerate(rows):
        n = min(len(r), shape[1])
        if n:
            out[b, :n] = torch.as_tensor(np.asarray(r[:n]), dtype=dtype)
    return out.to(device)


def teacher_tensors(rollouts: Sequence[Rollout], shape, device) -> dict[str, torch.Tensor]:
    """Cached teacher arrays of a micro-batch, padded to [B, T(, K)] (masked positions: token 0, logit 0)."""
    B, T = shape
    from visd.teacher import completion_hash

    for r in rollouts:
        if r.teacher is None:
            raise SystemExit(f"visd train: rollout {r.rollout_id} has no row in the teacher cache; pass the "
                             "phase's --teacher-cache shards (teacher_logits stage) or set lam0 = 0")
        if len(r.teacher.token_logit) != len(r.completion_ids) or (
                r.teacher.completion_hash and r.teacher.completion_hash != completion_hash(r.completion_ids)):
            raise SystemExit(f"visd train: the teacher cache row of {r.rollout_id} scored other completion tokens "
                             "than the rollout has (stale cache): rerun the teacher_logits stage for this phase")
    K = min(int(r.teacher.top_ids.shape[1]) for r in rollouts)
    top_ids = torch.zeros((B, T, K), dtype=torch.long)
    top_logits = torch.zeros((B, T, K), dtype=torch.float32)
    tok_logit = torch.zeros((B, T), dtype=torch.float32)
    lse = torch.zeros((B, T), dtype=torch.float32)
    for b, r in enumerate(rollouts):
        n = len(r.completion_ids)
        top_ids[b, :n] = torch.as_tensor(np.asarray(r.teacher.top_ids)[:, :K], dtype=torch.long)
        top_logits[b, :n] = torch.as_tensor(np.asarray(r.teacher.top_logits, dtype=np.float32)[:, :K])
        tok_logit[b, :n] = torch.as_tensor(np.asarray(r.teacher.token_logit, dtype=np.float32))
        lse[b, :n] = torch.as_tensor(np.asarray(r.teacher.logsumexp, dtype=np.float32))
    return {"top_ids": top_ids.to(device), "top_logits": top_logits.to(device), "token_logit": tok_logit.to(device),
            "logsumexp": lse.to(device)}


# ============================================================================ EMA teacher

@torch.no_grad()
def ema_update(teacher, policy, decay: float) -> None:
    """θ_T ← d·θ_T + (1 − d)·θ for every parameter (METHODS §1.12)."""
    for pt, p in zip(teacher.parameters(), policy.parameters()):
        pt.mul_(decay).add_(p.detach().to(pt.dtype), alpha=1.0 - decay)


def teacher_on(recipe: str, cfg: dict, lam: float) -> bool:
    """Whether the EMA teacher is updated after this step."""
    return (recipe == "visd" and lam > 0) or (recipe == "opsd" and cfg["opsd"]["teacher"] == "ema")


# ============================================================================ checkpoints

def save_hf_folder(model, src_folder: str | os.PathLike, out: str | os.PathLike, info: dict,
                   state_dict: dict | None = None) -> None:
    """Write ``model`` as an HF folder at ``out`` atomically: weights (``state_dict`` if given: the gathered
    weights of a sharded model) + config, the tokenizer / processor / generation files copied from
    ``src_folder``, and ``visd_train.json``."""
    out, src = Path(out), Path(src_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in (
                    "config.json", "model.safetensors.index.json", TRAIN_INFO):
                shutil.copy2(f, tmp / f.name)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        write_json(info, tmp / TRAIN_INFO)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def copy_hf_folder(src: str | os.PathLike, out: str | os.PathLike, info: dict) -> None:
    """Copy an HF folder atomically (weights untouched) with a new ``visd_train.json``."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(TRAIN_INFO))
        write_json(info, tmp / TRAIN_INFO)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_latest(state_root: Path) -> dict | None:
    p = state_root / "latest.json"
    if not p.exists():
        return None
    latest = json.loads(p.read_text())
    return latest if (state_root / latest["dir"] / "trainer.json").exists() else None


def save_trainer_state(accelerator, state_root: Path, teacher, position: dict, metrics: list[dict],
                       sharded: tuple | None = None) -> None:
    """accelerate ``save_state`` (model, optimizer, RNG of every process) + EMA teacher + position +
    metrics into ``step-NNNNNN/``, then ``latest.json`` is switched atomically and older steps pruned.
    ``sharded`` = (model, optimizer) of an FSDP2 run: model, optimizer and teacher go through
    ``torch.distributed.checkpoint`` instead (:func:`visd.sharding.save_state`)."""
    from safetensors.torch import save_file

    name = f"step-{position['phase_step']:06d}"
    tmp = state_root / f".{name}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if sharded:
        sharding.save_state(tmp, *sharded, teacher, accelerator.process_index)
    else:
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if teacher is not None and not sharded:
            save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()},
                      str(tmp / "teacher.safetensors"))
        write_parquet(pa.Table.from_pylist(metrics) if metrics else pa.table({}), tmp / "metrics.parquet")
        write_json(position, tmp / "trainer.json")  # last: a step dir with trainer.json is complete
        final = state_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json({"dir": name, **position}, state_root / "latest.json")
        for d in state_root.iterdir():
            if d.is_dir() and d.name != name and (d.name.startswith("step-") or d.name.startswith(".step-")):
                shutil.rmtree(d)
    accelerator.wait_for_everyone()


def load_trainer_state(accelerator, state_dir: Path, teacher, sharded: tuple | None = None) -> tuple[dict, list[dict]]:
    from safetensors.torch import load_file

    if sharded:
        sharding.load_state(state_dir, *sharded, teacher, accelerator.process_index)
    else:
        accelerator.load_state(str(state_dir))
    if teacher is not None and not sharded and (state_dir / "teacher.safetensors").exists():
        sd = load_file(str(state_dir / "teacher.safetensors"), device=str(accelerator.device))
        teacher.load_state_dict(sd, strict=False)
    position = json.loads((state_dir / "trainer.json").read_text())
    m = pq.read_table(state_dir / "metrics.parquet").to_pylist() if (state_dir / "metrics.parquet").exists() else []
    return position, m


def _rng_seed(seed: int, phase: int) -> None:
    random.seed(seed * 1000003 + phase)
    np.random.seed((seed * 1000003 + phase) % 2**32)
    torch.manual_seed(seed * 1000003 + phase)


# ============================================================================ one optimizer step

@dataclass
class StepContext:
    accelerator: Any
    model: Any  # as prepared by accelerate (DDP-wrapped with several processes), or FSDP2-sharded
    unwrapped: Any
    optimizer: Any
    teacher: Any  # EMA teacher (visd, opsd) or None
    ref_model: Any  # KL reference or None
    prompts: Prompts
    cfg: dict  # the train section
    recipe: str
    pad_id: int
    sharded: bool = False  # FSDP2 (visd.sharding): policy, teacher and reference sharded alike


def optimizer_step(ctx: StepContext, step_rollouts: list[Rollout], lam: float) -> tuple[float, StepStats, bool]:
    """One optimizer step over ``step_rollouts`` (all processes pass the same list): this process's
    contiguous share in micro-batches (gradient accumulation, DDP sync on the last one), clip, AdamW,
    then the EMA teacher update. Returns (grad norm, step statistics, whether the EMA moved)."""
    acc, cfg, recipe = ctx.accelerator, ctx.cfg, ctx.recipe
    world = acc.num_processes
    live = recipe == "opsd" and cfg["opsd"]["teacher"] == "live"
    pixel_dtype = next(ctx.unwrapped.model.visual.parameters()).dtype
    norm = {"n_seq": sum(1 for r in step_rollouts if r.completion_ids),
            "n_tok": sum(len(r.completion_ids) for r in step_rollouts), "world": world}
    mine = shard_for_rank(step_rollouts, acc.process_index, world)
    n_micro = max(1, math.ceil(math.ceil(len(step_rollouts) / world) / cfg["micro_batch"]))
    micro = [mine[i:i + cfg["micro_batch"]] for i in range(0, len(mine), cfg["micro_batch"])]
    stats = StepStats()
    for m in range(n_micro):
        weight = 1.0 if m < len(micro) else 0.0  # padding micro-batch: same collective calls, no gradient
        mb = micro[m] if m < len(micro) else (micro[0] if micro else step_rollouts[:1])
        batch = to_device(collate([ctx.prompts.get(r.sample_id) for r in mb], [r.completion_ids for r in mb],
                                  ctx.pad_id, ctx.unwrapped.config), acc.device, pixel_dtype)
        sync = m == n_micro - 1
        if ctx.sharded:  # FSDP2: reduce-scatter the gradients once, after the last micro-batch
            ctx.model.set_requires_gradient_sync(sync)
        with acc.no_sync(ctx.model) if (world > 1 and not sync and not ctx.sharded) else _nullcontext():
            with acc.autocast():
                logits = completion_logits(ctx.model, batch)  # z^S, live
            teacher_logits = ref_logp = None
            if live:  # OPSD live teacher: the current weights on the teacher view, no gradient
                with torch.no_grad(), acc.autocast():
                    tb = to_device(collate([ctx.prompts.get(r.sample_id, "teacher", r.hint) for r in mb],
                                           [r.completion_ids for r in mb], ctx.pad_id, ctx.unwrapped.config),
                                   acc.device, pixel_dtype)
                    teacher_logits = completion_logits(ctx.unwrapped, tb).detach()
            if ctx.ref_model is not None:
                with torch.no_grad(), acc.autocast():
                    ref_logp = token_logprobs(completion_logits(ctx.ref_model, batch), batch.tokens)
            loss = micro_batch_loss(recipe, cfg, logits, batch, mb, lam, norm, stats, weight,
                                    teacher_logits=teacher_logits, ref_logp=ref_logp)
            acc.backward(loss)
    if ctx.sharded:
        grad_norm = sharding.to_float(torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg["max_grad_norm"]))
    else:
        grad_norm = acc.clip_grad_norm_(ctx.model.parameters(), cfg["max_grad_norm"])
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    ema = ctx.teacher is not None and teacher_on(recipe, cfg, lam)
    if ema:  # θ_T ← d·θ_T + (1−d)·θ (sharded: each process on its own shards, no communication)
        ema_update(ctx.teacher, ctx.unwrapped, cfg["ema_decay"])
    return float(grad_norm), stats, ema


# ============================================================================ the trainer

def run(params: dict, phase: int, samples_path: str, frames_paths: Sequence[str], rollout_paths: Sequence[str],
        reward_paths: Sequence[str], policy_in: str, out_dir: str, teacher_in: str | None = None,
        teacher_cache: Sequence[str] = (), judge_paths: Sequence[str] = (), reference: str | None = None,
        metrics_path: str | None = None, tensorboard: str | None = None, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from tqdm import tqdm

    cfg = cfgmod.section("train", params.get("train"))
    curriculum = cfgmod.section("curriculum", params.get("curriculum"))
    phases = curriculum["phases"]
    prompt_cfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0))
    recipe = cfg["recipe"]
    cuda = torch.cuda.is_available()
    mp = cfg["mixed_precision"]
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise SystemExit("visd train: DeepSpeed is not supported (the EMA teacher must be sharded like the policy); "
                         "launch with --config_file config/accelerate/fsdp.yaml (FSDP2) or plain multi-process (DDP)")
    shard = sharding.wanted(cfg["sharding"], int(os.environ.get("WORLD_SIZE", "1")))
    if shard:  # the trainer applies fully_shard itself (visd.sharding); accelerate runs plain multi-process
        os.environ["ACCELERATE_USE_FSDP"] = "false"
    accelerator = Accelerator(cpu=not cuda, mixed_precision=("bf16" if cuda else "no") if mp == "auto" else mp)
    world, main = accelerator.num_processes, accelerator.is_main_process
    log = (lambda msg: print(f"[train] {msg}", file=sys.stderr, flush=True)) if main else (lambda msg: None)
    log(f"phase {phase} recipe {recipe}: world size {world}, device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}, sharding {'fsdp' if shard else 'none'}")

    # ---------------------------------------------------------------- data of the phase
    tokenizer = load_tokenizer(policy_in)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    samples = {r["sample_id"]: r for r in read_rows([samples_path])}
    if recipe == "sft":
        ids = ({r["sample_id"] for r in read_rows(rollout_paths, ["sample_id"])} if rollout_paths else
               {r["sample_id"] for r in read_rows(frames_paths, ["sample_id"]) if samples[r["sample_id"]]["split"] == "train"})
        groups = sft_groups(ids, samples, tokenizer)
    else:
        groups = load_groups(rollout_paths, reward_paths)
    if not groups:
        raise SystemExit(f"visd train: no rollouts in {list(rollout_paths)}")
    needed = {r.sample_id for g in groups.values() for r in g}
    frames = {r["sample_id"]: r for r in read_rows(frames_paths) if r["sample_id"] in needed}
    prompts = Prompts(tokenizer, samples, frames, prompt_cfg)

    group_ids = list(groups)
    plan = step_plan(group_ids, cfg["prompts_per_step"], cfg["epochs"], seed, phase, curriculum.get("steps_per_phase"))
    n_steps = len(plan)
    start_global = int(trainer_info(policy_in).get("global_step", 0)) if phase > 0 else 0
    total_steps = cfg["total_steps"] or phases * n_steps
    lam_of = lambda s: losses.lambda_at(s, cfg["lam0"], cfg["anneal_steps"]) if recipe == "visd" else 0.0
    lams = [lam_of(start_global + i + 1) for i in range(n_steps)]
    needs_cache = (recipe == "visd" and max(lams) > 0) or (recipe == "opsd" and cfg["opsd"]["teacher"] != "live")
    cached_ref = all(r.ref_logprob is not None for g in groups.values() for r in g)  # R-MSD rewards carry them
    if needs_cache or (cfg["kl_coef"] > 0 and reference is None and recipe != "sft" and not cached_ref):
        if not teacher_cache:
            raise SystemExit(f"visd train: recipe {recipe} (λ up to {max(lams):.3g}) needs --teacher-cache shards")
        from visd.teacher import load_teacher

        cache = load_teacher(list(teacher_cache), rollout_ids={r.rollout_id for g in groups.values() for r in g})
        for g in groups.values():
            for r in g:
                r.teacher = cache.get(r.rollout_id)
    if recipe == "opsd" and cfg["opsd"]["teacher"] == "live":
        attach_live_hints(groups, samples, params, judge_paths)

    # ---------------------------------------------------------------- models
    _rng_seed(seed, phase)
    model = load_model(policy_in)
    model.config.use_cache = False
    model.train()
    teacher = None  # the EMA teacher, only where this phase moves it
    if (recipe == "visd" and max(lams) > 0) or (recipe == "opsd" and cfg["opsd"]["teacher"] == "ema"):
        teacher = load_model(teacher_in or policy_in).to(accelerator.device).eval().requires_grad_(False)
    ref_model = load_model(reference).to(accelerator.device).eval().requires_grad_(False) if (
        reference and cfg["kl_coef"] > 0) else None
    if shard:  # the same layout for all three, so the EMA update is shard-local
        bf16 = accelerator.mixed_precision == "bf16"
        model, teacher, ref_model = (sharding.shard(m, accelerator.device, bf16) if m is not None else None
                                     for m in (model, teacher, ref_model))
        optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
        unwrapped = model
    else:
        optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
        model, optimizer = accelerator.prepare(model, optimizer)
        unwrapped = accelerator.unwrap_model(model)

    # ---------------------------------------------------------------- resume (same command after a kill)
    out = Path(out_dir)
    state_root = out / STATE_DIR
    fingerprint = params_hash({
        "train": cfg, "seed": seed, "phase": phase, "curriculum": curriculum, "prompt": prompt_cfg,
        "policy_in": checkpoint_hash(policy_in), "teacher_in": checkpoint_hash(teacher_in) if teacher_in else None,
        "inputs": [(Path(p).name, os.path.getsize(p)) for p in [*rollout_paths, *reward_paths, *teacher_cache]],
        "world": world, "sharding": shard,
    })
    metrics: list[dict] = []
    phase_step = 0
    latest = read_latest(state_root)
    if latest and latest.get("fingerprint") == fingerprint:
        position, metrics = load_trainer_state(accelerator, state_root / latest["dir"], teacher,
                                               (model, optimizer) if shard else None)
        phase_step = int(position["phase_step"])
        log(f"resumed from {state_root / latest['dir']} at phase step {phase_step}/{n_steps}")
    else:
        if latest:
            log(f"ignoring {state_root}: it belongs to a different config or inputs (fingerprint mismatch)")
        prev = Path(policy_in).parent / STATE_DIR
        prev_latest = read_latest(prev) if phase > 0 else None
        if prev_latest and prev_latest.get("complete"):
            # Adam moments carry across phases (the offline form of one continuous run)
            prev_dir = prev / prev_latest["dir"]
            if (prev_dir / sharding.SHARDED_DIR).is_dir() != shard:
                log(f"optimizer state not continued: {prev_dir} was saved {'un' if shard else ''}sharded")
            elif shard:
                sharding.load_optimizer(prev_dir, model, optimizer)
                log(f"optimizer state continued from {prev_dir}")
            else:
                optimizer.load_state_dict(torch.load(prev_dir / "optimizer.bin", map_location="cpu", weights_only=False))
                log(f"optimizer state continued from {prev_dir}")

    writer = None
    if tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard, purge_step=start_global + phase_step + 1)

    # ---------------------------------------------------------------- optimisation
    ctx = StepContext(accelerator, model, unwrapped, optimizer, teacher, ref_model, prompts, cfg, recipe, pad_id, shard)
    bar = tqdm(total=n_steps, initial=phase_step, desc=f"train phase {phase} ({recipe})", unit="step",
               disable=not (progress and main), file=sys.stderr)
    for step_idx in range(phase_step, n_steps):
        t0 = time.perf_counter()
        s = start_global + step_idx + 1  # 1-based global optimizer step being taken
        lam = lams[step_idx]
        lr = lr_at(s - 1, cfg["lr"], cfg["warmup_steps"], total_steps)
        set_lr(optimizer, lr)
        step_rollouts = [r for g in plan[step_idx] for r in groups[g]]
        grad_norm, stats, ema = optimizer_step(ctx, step_rollouts, lam)
        stats.reduce(accelerator)
        dt = time.perf_counter() - t0
        row = metrics_row(phase, step_idx + 1, s, recipe, lam, lr, grad_norm, stats, dt, world, ema)
        metrics.append(row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("phase", "step", "global_step") and v is not None:
                    writer.add_scalar(f"train/{k}", v, s)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lam=f"{lam:.3f}", gn=f"{row['grad_norm']:.3f}")
        done = step_idx + 1 == n_steps
        if (step_idx + 1) % cfg["save_every"] == 0 or done:
            save_trainer_state(accelerator, state_root, teacher,
                               {"phase": phase, "phase_step": step_idx + 1, "n_steps": n_steps, "global_step": s,
                                "complete": done, "fingerprint": fingerprint, "world": world}, metrics,
                               (model, optimizer) if shard else None)
    bar.close()
    if writer is not None:
        writer.close()

    # ---------------------------------------------------------------- outputs: teacher, metrics, policy (last)
    accelerator.wait_for_everyone()
    end_global = start_global + n_steps
    info = {"phase": phase, "global_step": end_global, "recipe": recipe, "phase_steps": n_steps,
            "policy_in": checkpoint_hash(policy_in), "fingerprint": fingerprint,
            "lambda_last": lams[-1] if lams else 0.0, "lambda_next": lam_of(end_global + 1)}
    # sharded: gather the full weights onto process 0 (a collective, so every process takes part)
    teacher_sd = sharding.full_state_dict(teacher) if shard and teacher is not None else None
    policy_sd = sharding.full_state_dict(model) if shard else None
    if main:
        if teacher is not None:
            save_hf_folder(teacher, policy_in, out / TEACHER_DIR, {**info, "role": "ema_teacher"}, teacher_sd)
        else:  # no EMA this phase (grpo, λ = 0, opsd frozen / live): the incoming teacher, unchanged
            copy_hf_folder(teacher_in or policy_in, out / TEACHER_DIR, {**info, "role": "teacher_passthrough"})
        if metrics_path:
            write_parquet(pa.Table.from_pylist(metrics), metrics_path)
        save_hf_folder(unwrapped, policy_in, out / POLICY_DIR, {**info, "role": "policy"}, policy_sd)
        log(f"wrote {out / POLICY_DIR} (global step {end_global}) and {out / TEACHER_DIR}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"steps": n_steps, "global_step": end_global, "world": world, "metrics": metrics}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


METRIC_COLUMNS = ("phase", "step", "global_step", "recipe", "loss", "pg_loss", "jsd_loss", "sampled_token_loss",
                  "sft_loss", "kl", "lambda", "omega_mean", "omega_min", "omega_max", "omega_frac_changed",
                  "omega_hist", "grad_norm", "ratio_mean", "ratio_min", "ratio_max", "ratio_clip_frac", "reward_mean",
                  "advantage_mean", "advantage_abs_mean", "sequences", "tokens", "tokens_per_s", "step_time_s", "lr",
                  "ema_updated", "world_size")


def metrics_row(phase, step, s, recipe, lam, lr, grad_norm, st: StepStats, dt, world, ema) -> dict:
    S = st.sums
    n_seq, n_tok = S.get("n_seq", 0.0), S.get("n_tok", 0.0)
    on, rn = S.get("omega_n", 0.0), S.get("ratio_n", 0.0)
    return {
        "phase": phase, "step": step, "global_step": s, "recipe": recipe,
        "loss": S.get("loss", 0.0), "pg_loss": S.get("pg_loss"), "jsd_loss": S.get("jsd_loss"),
        "sampled_token_loss": S.get("sampled_token_loss"), "sft_loss": S.get("sft_loss"), "kl": S.get("kl"),
        "lambda": float(lam),
        "omega_mean": S["omega_sum"] / on if on else None, "omega_min": st.mins.get("omega"),
        "omega_max": st.maxs.get("omega"), "omega_frac_changed": S["omega_changed"] / on if on else None,
        "omega_hist": [int(c) for c in st.hists["omega"]] if on and "omega" in st.hists else None,
        "grad_norm": grad_norm,
        "ratio_mean": S["ratio_sum"] / rn if rn else None, "ratio_min": st.mins.get("ratio"),
        "ratio_max": st.maxs.get("ratio"), "ratio_clip_frac": S["ratio_clipped"] / rn if rn else None,
        "reward_mean": S.get("reward_sum", 0.0) / n_seq if n_seq else None,
        "advantage_mean": S.get("adv_sum", 0.0) / n_seq if n_seq else None,
        "advantage_abs_mean": S.get("adv_abs_sum", 0.0) / n_seq if n_seq else None,
        "sequences": int(n_seq), "tokens": int(n_tok), "tokens_per_s": n_tok / dt if dt > 0 else None,
        "step_time_s": dt, "lr": lr, "ema_updated": bool(ema), "world_size": world,
    }


def attach_live_hints(groups: dict[str, list[Rollout]], samples: dict, params: dict, judge_paths: Sequence[str]) -> None:
    """Teacher-view hints of the ``opsd`` live teacher: the privileged context the teacher stage builds
    (:func:`visd.teacher.hint_for` with the ``teacher.hint`` components and the judge's feedback)."""
    from visd.teacher import hint_for

    components = cfgmod.section("teacher", params.get("teacher"))["hint"]
    feedback = {r["rollout_id"]: r.get("feedback") for r in read_rows(judge_paths, ["rollout_id", "feedback"])}
    if "feedback" in components and not judge_paths:
        raise SystemExit("visd train: opsd live teacher with teacher.hint 'feedback' needs --judge shards")
    for g in groups.values():
        for r in g:
            r.hint = hint_for(samples[r.sample_id], feedback.get(r.rollout_id), components)


# ============================================================================ CLI

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", required=True, help="config JSON ({seed, train, curriculum, prompt, rollout, teacher}) or @file")
    p.add_argument("--phase", type=int, required=True)
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--frames", nargs="+", required=True, help="results/frames/shard-*.parquet")
    p.add_argument("--rollouts", nargs="*", default=[], help="results/rollouts/phase-P/shard-*.parquet")
    p.add_argument("--rewards", nargs="*", default=[], help="results/rewards/phase-P/shard-*.parquet")
    p.add_argument("--teacher-cache", nargs="*", default=[], help="results/teacher/phase-P/shard-*.parquet")
    p.add_argument("--judge", nargs="*", default=[], help="judge shards (opsd live teacher: feedback in the hint)")
    p.add_argument("--policy-in", required=True, help="HF folder of the policy that ended phase P-1 (phase 0: init)")
    p.add_argument("--teacher-in", default=None, help="HF folder of the EMA teacher (default: --policy-in)")
    p.add_argument("--reference", default=None, help="HF folder of the KL reference model (train.kl_coef > 0)")
    p.add_argument("--out-dir", required=True, help="checkpoints/phase-P (policy/, teacher/, trainer_state/)")
    p.add_argument("--metrics", default=None, help="metrics/phase-P.parquet")
    p.add_argument("--tensorboard", default=None, help="TensorBoard log folder")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd train: {e}", file=sys.stderr)
        return 2
    run(params, args.phase, args.samples, args.frames, args.rollouts, args.rewards, args.policy_in, args.out_dir,
        teacher_in=args.teacher_in, teacher_cache=args.teacher_cache, judge_paths=args.judge,
        reference=args.reference, metrics_path=args.metrics, tensorboard=args.tensorboard,
        progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="visd train")
    configure_parser(p)
    sys.exit(main(p.parse_args()))
