"""The ``hf`` engine: transformers on CPU or GPU, with our own sampling loop.

Why our own loop rather than ``model.generate``: we need (i) the behaviour log-probability of every
sampled token under the *unmodified* model distribution (log-softmax of the raw logits), (ii) explicit
3-D M-RoPE position ids from :mod:`visd.positions` (the reference Qwen2.5-VL rule, which vLLM follows and
transformers 5.x does not), and (iii) seeding per request, so a completion does not depend on what else
was in the batch. The prompt is prefilled once; its KV cache is repeated for the ``n`` samples of the group
(batched decoding), and for scoring the cache is repeated for the group's completions.

Greedy decoding (temperature 0, one completion per request) can also batch *different* requests
(:meth:`HFEngine.generate_batch`, used by ``generate`` when the engine's ``batch_size`` > 1): the prompts
are left-padded into one batch with an attention mask, each row keeps its own M-RoPE ids and its own rope
delta for the decode steps, and a row leaves the batch as soon as it stops. The tokens are those of the
one-request path; the logits agree to float rounding only (see :meth:`HFEngine.generate_batch`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from visd.engines.base import Completion, Request, Sampling, ScoreResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def request_seed(seed: int, request_id: str) -> int:
    """A per-request seed, independent of batch composition and order."""
    return int(hashlib.sha256(f"{seed}:{request_id}".encode()).hexdigest()[:15], 16)


def filter_logits(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """Sampling distribution's log-weights: temperature, then top-k, then nucleus (top-p) filtering."""
    z = logits / max(temperature, 1e-6)
    if top_k and top_k > 0 and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=True, dim=-1)
        probs = torch.softmax(sorted_z, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_z = sorted_z.masked_fill(drop, float("-inf"))
        z = torch.full_like(z, float("-inf")).scatter(-1, order, sorted_z)
    return z


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        seed: int = 0,
        batch_size: int = 1,
        **_: object,
    ):
        """``batch_size``: requests decoded together by greedy ``generate(requests, 1, ...)`` (1 = one at a time)."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        if int(batch_size) < 1:
            raise ValueError(f"HFEngine batch_size={batch_size!r}; must be >= 1")
        self.batch_size = int(batch_size)
        self.model_path = str(model_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = DTYPES[dtype]
        self.seed = seed
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.model_path, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        cfg = self.model.config
        self.vision_cfg = cfg.vision_config
        stops = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        self.stop_ids = sorted({t for t in stops if t is not None and t >= 0})

    # ------------------------------------------------------------------ helpers
    def _inputs(self, req: Request) -> dict:
        ids = torch.tensor([req.input_ids], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            if k in req.mm and req.mm[k] is not None:
                v = req.mm[k]
                out[k] = v.to(self.dtype) if k.startswith("pixel") else v
        return {k: v.to(self.device) for k, v in out.items()}

    def positions(self, req: Request) -> tuple[torch.Tensor, int]:
        """3-D position ids ``[3, 1, L]`` of the prompt and the text delta for positions after it."""
        from visd.positions import rope_index

        mm = req.mm
        pos, delta = rope_index(
            torch.tensor([req.input_ids]),
            image_grid_thw=mm.get("image_grid_thw"),
            video_grid_thw=mm.get("video_grid_thw"),
            second_per_grid_ts=mm.get("second_per_grid_ts"),
            image_token_id=self.model.config.image_token_id,
            video_token_id=self.model.config.video_token_id,
            spatial_merge_size=self.vision_cfg.spatial_merge_size,
            tokens_per_second=getattr(self.vision_cfg, "tokens_per_second", 2),
        )
        return pos.to(self.device), int(delta.reshape(-1)[0])

    def _prefill(self, req: Request):
        pos, delta = self.positions(req)
        out = self.model(**self._inputs(req), position_ids=pos, use_cache=True)
        return out.logits[:, -1].float(), out.past_key_values, pos.shape[-1], delta

    def _step_positions(self, start: int, length: int, batch: int, delta: int) -> torch.Tensor:
        p = torch.arange(start, start + length, device=self.device) + delta
        return p.view(1, 1, -1).expand(3, batch, -1)

    def _vision_features(self, req: Request) -> dict[int, torch.Tensor]:
        """Vision-tower outputs of one request, keyed by the pad token they replace (as its own forward computes them)."""
        cfg, inner = self.model.config, self.model.model
        out = {}
        for token, pix, grid, fn in (
            (cfg.image_token_id, "pixel_values", "image_grid_thw", inner.get_image_features),
            (cfg.video_token_id, "pixel_values_videos", "video_grid_thw", inner.get_video_features),
        ):
            if req.mm.get(pix) is None:
                continue
            feats = fn(req.mm[pix].to(self.device, self.dtype), req.mm[grid].to(self.device))
            feats = getattr(feats, "pooler_output", feats)
            out[token] = torch.cat(list(feats)) if isinstance(feats, (tuple, list)) else feats
        return out

    def _batch_prefill(self, requests: Sequence[Request]):
        """Left-padded prefill of different requests: last logits ``[B, V]``, cache, attention mask, and each
        row's position of its first generated token (prompt length + its rope delta).

        Each row's prompt sits right-aligned with its own M-RoPE ids (:meth:`positions`); padding gets
        position 1 and mask 0. The vision tower runs per request, as that request's own forward runs it,
        and its outputs replace the row's vision pad tokens in the input embeddings.
        """
        lens = [len(r.input_ids) for r in requests]
        width = max(lens)
        pads = [width - n for n in lens]
        pad_id = self.stop_ids[0] if self.stop_ids else 0
        ids = torch.full((len(requests), width), pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(requests), width), dtype=torch.long, device=self.device)
        pos = torch.ones((3, len(requests), width), dtype=torch.long, device=self.device)  # padding: 1
        starts = []
        for b, req in enumerate(requests):
            ids[b, pads[b] :] = torch.tensor(req.input_ids, dtype=torch.long, device=self.device)
            mask[b, pads[b] :] = 1
            p, delta = self.positions(req)
            pos[:, b, pads[b] :] = p[:, 0]
            starts.append(lens[b] + delta)
        embeds = self.model.get_input_embeddings()(ids)
        for b, req in enumerate(requests):
            for token, feats in self._vision_features(req).items():
                where = ids[b] == token
                where[: pads[b]] = False
                if int(where.sum()) != feats.shape[0]:
                    raise ValueError(f"request {req.request_id}: {int(where.sum())} vision pad tokens (id {token}) "
                                     f"but {feats.shape[0]} vision features; rebuild it with visd.prompts.render")
                embeds[b, where] = feats.to(embeds.dtype)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float(), out.past_key_values, mask, starts

    # ------------------------------------------------------------------ interface
    @torch.no_grad()
    def generate(self, requests: Sequence[Request], n: int, sampling: Sampling) -> list[list[Completion]]:
        if n == 1 and sampling.temperature <= 0 and self.batch_size > 1 and len(requests) > 1:
            out: list[list[Completion]] = []
            for i in range(0, len(requests), self.batch_size):
                out.extend([c] for c in self.generate_batch(requests[i : i + self.batch_size], sampling))
            return out
        stops = torch.tensor(sorted(set(self.stop_ids) | set(sampling.stop_token_ids)), device=self.device)
        results = []
        for req in requests:
            gen = torch.Generator(device=self.device).manual_seed(request_seed(sampling.seed, req.request_id))
            logits, past, length, delta = self._prefill(req)
            past.batch_repeat_interleave(n)
            logits = logits.expand(n, -1)
            tokens = torch.zeros((n, 0), dtype=torch.long, device=self.device)
            logps = torch.zeros((n, 0), dtype=torch.float32, device=self.device)
            done = torch.zeros(n, dtype=torch.bool, device=self.device)
            for t in range(sampling.max_new_tokens):
                behaviour = torch.log_softmax(logits, dim=-1)
                z = filter_logits(logits, sampling.temperature, sampling.top_p, sampling.top_k)
                nxt = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=gen)
                tokens = torch.cat([tokens, nxt], 1)
                logps = torch.cat([logps, behaviour.gather(1, nxt)], 1)
                done = done | torch.isin(nxt.squeeze(1), stops)
                if bool(done.all()) or t + 1 == sampling.max_new_tokens:
                    break
                out = self.model(
                    input_ids=nxt,
                    position_ids=self._step_positions(length + t, 1, n, delta),
                    past_key_values=past,
                    use_cache=True,
                )
                past, logits = out.past_key_values, out.logits[:, -1].float()
            group = []
            for i in range(n):
                ids = tokens[i].tolist()
                stop_at = next((j for j, x in enumerate(ids) if x in set(stops.tolist())), None)
                keep = ids if stop_at is None else ids[: stop_at + 1]
                group.append(
                    Completion(
                        request_id=req.request_id,
                        index=i,
                        token_ids=keep,
                        logprobs=logps[i, : len(keep)].tolist(),
                        text=self.tokenizer.decode(keep, skip_special_tokens=True),
                        finish_reason="stop" if stop_at is not None else "length",
                    )
                )
            results.append(group)
        return results

    @torch.no_grad()
    def generate_batch(self, requests: Sequence[Request], sampling: Sampling) -> list[Completion]:
        """One completion per request, the requests decoded together in one left-padded batch.

        Each row draws its token with its own request-seeded generator through the same operations as
        ``generate(..., n=1)`` and leaves the batch when it emits a stop token or reaches ``max_new_tokens``.
        The logits are not bitwise those of the one-request path: a decode step of one request multiplies
        ``[1, H]`` activations (a GEMV in the BLAS), a batch ``[B, H]`` ones (a GEMM), and the two sum in a
        different order; padded attention under a mask does the same. The difference is a few float32 ulps
        (5e-7 to 7e-6 in log-probabilities on the tiny models), so a greedy token can differ only where the
        top two logits are that close. ``generate`` therefore batches only greedy calls: a sampled token would
        depend on the batch through these ulps wherever its uniform draw falls near a CDF boundary, and the
        contract is that a seeded completion does not depend on what else was in the batch.
        """
        if not requests:
            return []
        stops = set(self.stop_ids) | set(sampling.stop_token_ids)
        gens = [torch.Generator(device=self.device).manual_seed(request_seed(sampling.seed, r.request_id))
                for r in requests]
        logits, past, mask, starts = self._batch_prefill(requests)
        tokens: list[list[int]] = [[] for _ in requests]
        logps: list[list[float]] = [[] for _ in requests]
        finish: list[str | None] = [None] * len(requests)
        active = list(range(len(requests)))  # request index of each batch row
        for t in range(sampling.max_new_tokens):
            nxt = []
            for row, r in enumerate(active):
                z = logits[row : row + 1]
                behaviour = torch.log_softmax(z, dim=-1)
                tok = torch.multinomial(
                    torch.softmax(filter_logits(z, sampling.temperature, sampling.top_p, sampling.top_k), dim=-1),
                    1,
                    generator=gens[r],
                )
                tokens[r].append(int(tok))
                logps[r].append(float(behaviour.gather(1, tok)))
                nxt.append(tok)
                if int(tok) in stops:
                    finish[r] = "stop"
                elif t + 1 == sampling.max_new_tokens:
                    finish[r] = "length"
            keep = [row for row, r in enumerate(active) if finish[r] is None]
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch
                idx = torch.tensor(keep, device=self.device)
                past.batch_select_indices(idx)
                mask = mask[idx]
                active, nxt = [active[i] for i in keep], [nxt[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            pos = torch.tensor([starts[r] + t for r in active], device=self.device).view(1, -1, 1).expand(3, -1, 1)
            out = self.model(
                input_ids=torch.cat(nxt), position_ids=pos, past_key_values=past, attention_mask=mask, use_cache=True
            )
            past, logits = out.past_key_values, out.logits[:, -1].float()
        return [
            Completion(
                request_id=req.request_id,
                index=0,
                token_ids=tokens[r],
                logprobs=logps[r],
                text=self.tokenizer.decode(tokens[r], skip_special_tokens=True),
                finish_reason=finish[r] or "length",
            )
            for r, req in enumerate(requests)
        ]

    @torch.no_grad()
    def score(self, requests: Sequence[Request], completions: Sequence[Sequence[int]], top_k: int) -> list[ScoreResult]:
        """Teacher-forced scores of ``completions[i]`` after ``requests[i]``'s prompt.

        Consecutive pairs that share a request (the G rollouts of one prompt) share one prefill.
        """
        out: list[ScoreResult | None] = [None] * len(requests)
        i = 0
        while i < len(requests):
            j = i
            while j < len(requests) and requests[j] is requests[i]:
                j += 1
            self._score_group(requests[i], list(range(i, j)), completions, top_k, out)
            i = j
        return out  # type: ignore[return-value]

    def _score_group(self, req: Request, idx: list[int], completions, top_k: int, out: list) -> None:
        last, past, length, delta = self._prefill(req)
        b = len(idx)
        lens = [len(completions[k]) for k in idx]
        width = max(lens + [1])
        ids = torch.zeros((b, width), dtype=torch.long, device=self.device)
        for r, k in enumerate(idx):
            if lens[r]:
                ids[r, : lens[r]] = torch.tensor(completions[k], device=self.device)
        past.batch_repeat_interleave(b)
        mask = torch.ones((b, length + width), dtype=torch.long, device=self.device)
        res = self.model(
            input_ids=ids,
            position_ids=self._step_positions(length, width, b, delta),
            past_key_values=past,
            attention_mask=mask,
            use_cache=True,
        )
        # logits predicting completion token t: prefill's last for t = 0, then the completion's own
        logits = torch.cat([last.expand(b, -1).unsqueeze(1), res.logits[:, :-1].float()], dim=1)
        lse = torch.logsumexp(logits, dim=-1)
        k = min(top_k, logits.shape[-1])
        top = torch.topk(logits, k, dim=-1)
        tok_logit = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        for r, kk in enumerate(idx):
            n = lens[r]
            out[kk] = ScoreResult(
                request_id=req.request_id,
                top_ids=top.indices[r, :n].to(torch.int32).cpu().numpy(),
                top_logits=top.values[r, :n].cpu().numpy(),
                token_logit=tok_logit[r, :n].cpu().numpy(),
                logsumexp=lse[r, :n].cpu().numpy(),
                logprob=(tok_logit[r, :n] - lse[r, :n]).cpu().numpy(),
            )
