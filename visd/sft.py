"""`visd sft`: SFT warm-up of the initial policy on the reference reasoning (before phase 0).

Every training sample (split ``train`` only: eval samples are never trained on) has a ``reference``
completion in the answer format (``<think>…<obj>…</obj><box>[…]</box>at<t>…</t>s…</think><answer>…</answer>``).
Each optimizer step draws ``sft.batch_size`` samples (a seeded permutation per epoch) and renders each in
the student view, or — with probability ``sft.teacher_view_fraction`` — in the teacher view with the
hidden hint the teacher stage will show (``teacher.hint`` components: verified answer, window, key-frame
times; half of those also carry the rules judge's corrective feedback on a *wrong* reference, the one of
another sample of the same task type), so the model learns the format and to use the privileged context.
Half of the teacher-view examples are *counterfactual*: the hint states another answer the question
could have (one of a training sample with the same question, else of the same task type) and the target
reference ends with that answer. A tiny model memorises the few training videos within minutes, after
which an honest hint carries no information it lacks and nothing teaches it to read the hint; in a
counterfactual example only the hint predicts the answer. Optional ``sft`` keys: ``counterfactual`` (that
share, default 0.5), ``counterfactual_random`` (share of counterfactual answers drawn at random in the
task's answer format rather than from another sample, whose answers never include the true one),
``answer_weight`` (loss weight of the answer span of hinted examples, :func:`weighted_sft_loss`), and the
text-only copy warm-up / mix keys (``copy_*``, :func:`copy_warmup`).

Options for teaching the tiny model to read the hint (all off in the schema; the embedded default,
``config/config.yaml``, sets ``teacher_view_fraction`` 0.5, ``counterfactual`` 1, ``counterfactual_tasks``
[mcq, open], ``counterfactual_weight`` 20, ``induction_steps`` 200, ``induction_rows`` 16 and the hint
component ``answer_tagged``; :func:`teacher_example`):
``counterfactual_tasks`` (task types whose teacher-view rows may be counterfactual; null = all): the tiny
model can learn to copy a letter or a colour / shape word from the hint, not a digit string (a box, a
window, a count: digits recur in the hint's timestamps), so counterfactual digit answers only teach the
teacher view to spread probability over digits. ``counterfactual_think`` (false: a counterfactual target
is ``<think></think><answer>X</answer>``): the reference think argues for the true answer ("option D"),
and an answer that contradicts it teaches the shared weights that answers need not follow the think,
which costs the student view. ``counterfactual_weight`` (answer-span weight of counterfactual and copy
rows only; null = ``answer_weight``): the few answer tokens only the hint predicts need a large weight
before the copy forms within a few hundred steps, while weighting the honest rows' answers as well
starves the rest of the reference. ``paired_teacher`` (extra teacher-view rows per batch, each the
teacher view of a distinct student-view sample of the batch, of ``counterfactual_tasks`` first; drawn
from their own random stream): more rows that need the hint without fewer student-view rows.
``induction_steps`` / ``induction_rows`` / ``induction_length``: a random-weight model cannot copy from its
context at all (given a reference think ending "option D" it scores the letter at chance), and reading the
hint is a copy. ``induction_steps`` steps of induction rows (:func:`induction_batch`: random tokens, a
segment shown twice, loss on the repeat) before the SFT build an induction circuit in ~200 steps; the
SFT erases it unless ``induction_rows`` such rows join every step (their loss is added to the SFT loss).
With the hint component ``answer_tagged`` the hint writes the verified answer as ``<answer>X</answer>``
(:func:`visd.prompts.hint_text`), so the copy is exactly the pattern those rows teach.

Loss: token-mean cross-entropy of ``reference + <|im_end|>`` given the prompt
(:func:`visd.losses.sft_cross_entropy`), gradient-norm clip 1.0. Batching, M-RoPE positions, the
optimizer, the cosine schedule and the checkpoint writer are the trainer's (:mod:`visd.train`).

Diagnostic (printed and stored in the output's ``visd_train.json``; eval split, never trained on): the
log-probability of the verified answer span ``<answer>…</answer>`` of the reference, teacher view minus
student view (:func:`answer_margin`): positive when the model uses the hint; the same on up to 64
training samples (``answer_margin_train_after``), and the student view's per-token reference NLL
(``student_reference_nll``: does the student still learn the task).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from visd import config as cfgmod
from visd import losses
from visd import train as T
from visd.io import write_parquet

MARGIN_SAMPLES = 64  # eval samples the before/after answer margin is measured on (evenly spaced, sorted ids)


def perturbed_feedback(samples: dict[str, dict], ids: Sequence[str], seed: int) -> dict[str, str]:
    """Rules-judge feedback on a wrong reference (another sample's, same task type) for each sample."""
    from visd.judge.rules import judge

    rng = np.random.default_rng([seed, 11])
    by_task: dict[str, list[str]] = {}
    for sid in ids:
        by_task.setdefault(samples[sid]["task_type"], []).append(sid)
    out = {}
    for sid in ids:
        pool = [o for o in by_task[samples[sid]["task_type"]] if samples[o]["reference"] != samples[sid]["reference"]]
        if not pool:
            continue
        other = pool[int(rng.integers(len(pool)))]
        fb = judge(samples[sid], samples[other]["reference"]).feedback
        if fb:
            out[sid] = fb
    return out


def counterfactual_answers(samples: dict[str, dict], ids: Sequence[str]) -> dict[str, list[str]]:
    """Other answers a sample's question could have: those of training samples with the same question
    text (MCQ letters, colour lists, counts), else of the same task type (windows, boxes)."""
    from visd.prompts import question_text

    out = {}
    for sid in ids:
        s = samples[sid]
        same_q = {samples[o]["answer"] for o in ids if question_text(samples[o]) == question_text(s)}
        same_t = {samples[o]["answer"] for o in ids if samples[o]["task_type"] == s["task_type"]}
        out[sid] = sorted((same_q if len(same_q) > 1 else same_t) - {s["answer"], None, ""})
    return out


EMPTY_THINK = "<think></think><answer></answer>"  # counterfactual target without reasoning (counterfactual_think: false)
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star")


def random_answer(task_type: str, rng: np.random.Generator, duration: float = 8.0) -> str:
    """A random answer in the format of ``task_type`` (the synthetic tasks' answer vocabulary, with far
    more distinct values than the training set has): copying the hint is the only way to predict it."""
    def box() -> str:
        x, y, w, h = (int(v) for v in rng.integers(0, 100, 4))
        return f"[{x},{y},{x + 4 + w // 4},{y + 4 + h // 4}]"

    if task_type == "mcq":
        return "ABCD"[int(rng.integers(4))]
    if task_type == "numeric":
        return str(int(rng.integers(0, 10)))
    if task_type == "open":
        k = int(rng.integers(3))
        if k == 0:
            return str(rng.choice(COLOURS))
        if k == 1:
            return f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        cols = rng.choice(COLOURS, int(rng.integers(2, 4)), replace=False)
        return ", ".join(str(c) for c in cols)
    if task_type == "temporal":
        n = max(2, round(2 * duration))
        a, b = sorted(int(v) for v in rng.choice(n + 1, 2, replace=False))
        return f"From <t>{a / 2:.1f}</t>s to <t>{b / 2:.1f}</t>s"
    if task_type == "spatial":
        return box()
    if task_type == "spatiotemporal":
        ks = sorted(int(v) for v in rng.choice(int(max(2, 2 * duration)), int(rng.integers(1, 5)), replace=False))
        return "{" + ",".join(f'"{k}":{box()}' for k in ks) + "}"
    return str(rng.choice(COLOURS))


def text_prompt(tokenizer, sample: dict, hint: str) -> dict:
    """A text-only prompt (no vision input) in the chat layout of :func:`visd.prompts.render`'s teacher
    view: system, the user turn with the question then ``hint``, the assistant header."""
    from visd.prompts import ASSISTANT_TAIL, format_chat, question_text

    prefix = format_chat([{"role": "user", "content": [{"type": "text", "text": question_text(sample)}]}])
    prefix = prefix[: -len(ASSISTANT_TAIL)]
    def enc(t: str) -> list[int]:
        return list(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else []

    ids = torch.tensor([enc(prefix) + enc(hint) + enc(ASSISTANT_TAIL)], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids, dtype=torch.int32),
            "text": prefix + hint + ASSISTANT_TAIL, "hint": hint, "view": "teacher"}


def copy_example(tokenizer, sample: dict, rng: np.random.Generator, components: Sequence[str],
                 feedback: str | None = None) -> tuple[dict, list[int], str]:
    """One text-only copy example built on a training sample: its question, a teacher hint whose verified
    answer is a fresh random answer X of its task type (window / key frames / feedback as the sample
    has them), and target = its reference with the answer replaced by X. Returns (prompt, completion, X)."""
    from visd.teacher import hint_for

    x = random_answer(sample["task_type"], rng, float(sample.get("duration_s") or 8.0))
    hint = hint_for({**sample, "answer": x}, feedback, components)
    return text_prompt(tokenizer, sample, hint), example_completion(tokenizer, with_answer(sample["reference"], x)), x


def copy_warmup(model, tokenizer, samples: dict[str, dict], train_ids: Sequence[str], feedback: dict[str, str],
                components: Sequence[str], steps: int, batch_size: int, lr: float, seed: int, device,
                progress: bool = False) -> list[dict]:
    """``steps`` optimizer steps of text-only copy examples (:func:`copy_example`): the model learns to
    read the hint's verified answer into ``<answer>…</answer>`` before the SFT on the videos."""
    from tqdm import tqdm

    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    optimizer = T.make_optimizer(model, lr, weight_decay=0.0)
    model.train()
    rows, t_start = [], time.perf_counter()
    for step in tqdm(range(steps), desc="sft copy warm-up", unit="step", disable=not progress, file=sys.stderr):
        rng = np.random.default_rng([seed, 9, step])
        ps, cs = [], []
        for i in rng.integers(len(train_ids), size=batch_size):
            sid = train_ids[int(i)]
            fb = feedback.get(sid) if rng.random() < 0.5 else None
            p, c, _ = copy_example(tokenizer, samples[sid], rng, components, fb)
            ps.append(p)
            cs.append(c)
        batch = T.collate(ps, cs, pad_id, model.config)
        batch = T.to_device(batch, device)
        T.set_lr(optimizer, T.lr_at(step, lr, max(1, steps // 20), steps))
        loss = losses.sft_cross_entropy(T.completion_logits(model, batch), batch.tokens, batch.mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"step": step + 1, "loss": loss.item(), "elapsed_s": time.perf_counter() - t_start})
    return rows


INDUCTION_PREFIX = 8  # random tokens before the segment that is shown twice


def induction_pool(tokenizer) -> np.ndarray:
    """Token ids an induction row draws from: the ordinary (BPE) vocabulary, without the special tokens
    and the added format tags, so the rows teach copying and nothing about the answer format."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return np.array([i for i in range(len(tokenizer)) if i not in excluded], dtype=np.int64)


def induction_batch(pool: np.ndarray, rng: np.random.Generator, rows: int, length: int) -> torch.Tensor:
    """``rows`` induction rows ``[prefix(8), seg(length), seg(length)]`` of tokens drawn from ``pool``.
    Only the repeat is predictable, and only by looking back: the circuit a pretrained LLM copies with
    (an induction head), which a random-weight tiny model lacks."""
    seg = pool[rng.integers(len(pool), size=(rows, length))]
    pre = pool[rng.integers(len(pool), size=(rows, INDUCTION_PREFIX))]
    return torch.as_tensor(np.concatenate([pre, seg, seg], axis=1), dtype=torch.long)


def induction_loss(model, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean cross-entropy, accuracy) of the repeated segment's tokens from its second one on (the first
    follows a random token and cannot be predicted)."""
    ids = ids.to(model.device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
    target = ids[:, 1:]
    start = INDUCTION_PREFIX + (ids.shape[1] - INDUCTION_PREFIX) // 2  # target index of the repeat's 2nd token
    lg, tg = logits[:, start:].reshape(-1, logits.shape[-1]), target[:, start:].reshape(-1)
    return torch.nn.functional.cross_entropy(lg, tg), float((lg.argmax(-1) == tg).float().mean())


def induction_pretrain(model, tokenizer, steps: int, rows: int, length: int, lr: float, seed: int,
                       progress: bool = False) -> list[dict]:
    """``steps`` optimizer steps on :func:`induction_batch` rows (AdamW, warm-up + cosine, clip 1.0)."""
    from tqdm import tqdm

    pool = induction_pool(tokenizer)
    optimizer = T.make_optimizer(model, lr, weight_decay=0.0)
    model.train()
    rows_out, t_start = [], time.perf_counter()
    for step in tqdm(range(steps), desc="sft induction", unit="step", disable=not progress, file=sys.stderr):
        T.set_lr(optimizer, T.lr_at(step, lr, max(1, steps // 20), steps))
        loss, acc = induction_loss(model, induction_batch(pool, np.random.default_rng([seed, 12, step]), rows, length))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows_out.append({"step": step + 1, "loss": loss.item(), "accuracy": acc, "elapsed_s": time.perf_counter() - t_start})
    return rows_out


@torch.no_grad()
def induction_accuracy(model, tokenizer, length: int, seed: int, rows: int = 64) -> float:
    """Copy accuracy of the model on ``rows`` fresh induction rows (held-out stream)."""
    was_training = model.training
    model.eval()
    _, acc = induction_loss(model, induction_batch(induction_pool(tokenizer), np.random.default_rng([seed, 13]), rows, length))
    model.train(was_training)
    return acc


def teacher_example(tokenizer, sample: dict, completion: list[int], alternatives: Sequence[str], swap: bool,
                    fresh: bool, feedback: str | None, components: Sequence[str],
                    rng: np.random.Generator, think: bool = True) -> tuple[str, list[int], bool]:
    """(hint, target ids, counterfactual?) of one teacher-view SFT row. Honest unless ``swap``: then the
    hint's verified answer and the target's ``<answer>`` are another answer, a fresh :func:`random_answer`
    when ``fresh`` (or when the sample has no ``alternatives``), else one of ``alternatives`` (drawn from
    ``rng``). A counterfactual target keeps the reference think (which argues for the true answer) when
    ``think``, else it is ``<think></think><answer>X</answer>``: nothing before the answer contradicts it."""
    from visd.teacher import hint_for

    if swap and (fresh or alternatives):
        answer = (random_answer(sample["task_type"], rng, float(sample.get("duration_s") or 8.0))
                  if fresh or not alternatives else alternatives[int(rng.integers(len(alternatives)))])
        sample = {**sample, "answer": answer}
        reference = sample["reference"] if think else EMPTY_THINK
        completion = example_completion(tokenizer, with_answer(reference, answer))
        return hint_for(sample, feedback, components), completion, True
    return hint_for(sample, feedback, components), completion, False


def weighted_sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, answer_mask: torch.Tensor,
                      answer_weight: float) -> torch.Tensor:
    r"""Token-mean cross-entropy with the ``answer_mask`` tokens (the answer spans of the examples whose hint
    states the answer) counted ``answer_weight`` times; the denominator stays the number of ``mask``
    tokens, so the other tokens' gradient is that of :func:`visd.losses.sft_cross_entropy`:

    .. math::  L = \frac{1}{\sum_t m_t} \sum_t (m_t + (w - 1) a_t) \, (-\log p(y_t)).

    A token-mean over ~100-token references gives the few answer tokens only the hint predicts little
    gradient; ``answer_weight`` 1 is the plain loss. ``answer_weight`` may also be a ``[B]`` tensor, one
    weight per row (``w`` above then depends on the row: counterfactual rows weighted apart from honest
    ones, ``sft.counterfactual_weight``)."""
    loss = losses.sft_cross_entropy(logits, targets, mask)
    a = answer_mask & mask
    if isinstance(answer_weight, torch.Tensor):
        rows = answer_weight.to(device=logits.device, dtype=torch.float32) - 1.0
        if not bool(a.any()) or not bool(rows.any()):
            return loss
        tgt = torch.where(a, targets.long(), torch.zeros_like(targets, dtype=torch.long))
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        return loss + (nll * a * rows[:, None]).sum() / mask.sum().clamp_min(1)
    if answer_weight == 1.0 or not bool(a.any()):
        return loss
    extra = losses.sft_cross_entropy(logits, targets, a) * a.sum() / mask.sum().clamp_min(1)
    return loss + (answer_weight - 1.0) * extra


def with_answer(reference: str, answer: str) -> str:
    """``reference`` with its ``<answer>…</answer>`` span replaced."""
    return re.sub(r"<answer>.*?</answer>", lambda _: f"<answer>{answer}</answer>", reference, count=1, flags=re.DOTALL)


def example_completion(tokenizer, reference: str) -> list[int]:
    return list(tokenizer(reference, add_special_tokens=False)["input_ids"]) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def answer_span(tokenizer, ids: Sequence[int]) -> tuple[int, int]:
    """[start, end) of ``<answer> … </answer>`` in completion ids (whole completion if absent)."""
    a, b = tokenizer.convert_tokens_to_ids("<answer>"), tokenizer.convert_tokens_to_ids("</answer>")
    ids = list(ids)
    if a in ids and b in ids[ids.index(a):]:
        s = ids.index(a)
        return s, s + ids[s:].index(b) + 1
    return 0, len(ids)


class SharedPrompts(T.Prompts):
    """:class:`visd.train.Prompts` whose teacher views share the student view's vision tensors: a teacher
    prompt is the student prompt with the hint's ids spliced in after the shared prefix, exactly as
    :func:`visd.prompts.render` builds it (``ids(prefix) + ids(hint) + ids(tail)``), so the many hints
    SFT draws per sample (feedback, counterfactual answers) cost no re-render and no extra pixels."""

    def get(self, sample_id: str, view: str = "student", hint: str | None = None) -> dict:
        if view != "teacher":
            return super().get(sample_id, view, hint)
        from visd.prompts import hint_text

        key = (sample_id, view, hint)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        st = super().get(sample_id)
        h = hint_text(self.samples[sample_id]) if hint is None else hint
        n = st["n_prefix"]
        hid = torch.tensor([list(self.tokenizer(h, add_special_tokens=False)["input_ids"]) if h else []], dtype=torch.long)
        ids = torch.cat([st["input_ids"][:, :n], hid, st["input_ids"][:, n:]], 1)
        mm = torch.cat([st["mm_token_type_ids"][:, :n], torch.zeros_like(hid, dtype=st["mm_token_type_ids"].dtype),
                        st["mm_token_type_ids"][:, n:]], 1)
        text = st["text"]
        cut = len(text) - len("<|im_end|>\n<|im_start|>assistant\n")
        r = {**st, "input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm,
             "text": text[:cut] + h + text[cut:], "hint": h, "view": "teacher"}
        self.cache[key] = r
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return r


def view_hint(prompts: T.Prompts, sample_id: str, components: Sequence[str] | None = None,
              hint_fn: Callable[[dict], str] | None = None) -> str:
    """The teacher view's hint for ``sample_id``: ``hint_fn(sample)`` when given, else the verified hint
    (:func:`visd.prompts.hint_text` with the ``teacher.hint`` components, no judge feedback)."""
    from visd.prompts import hint_text

    sample = prompts.samples[sample_id]
    return hint_fn(sample) if hint_fn is not None else hint_text(sample, None, components=components)


@torch.no_grad()
def paired_logits(model, tokenizer, prompts: T.Prompts, sample_ids: Sequence[str], batch_size: int = 16,
                  device="cpu", components: Sequence[str] | None = None,
                  hint_fn: Callable[[dict], str] | None = None) -> Iterator[tuple]:
    """Teacher-forced forwards of each sample's reference completion (``reference + <|im_end|>``) in both
    views with the same weights, ``batch_size`` samples at a time.

    Yields ``(chunk, completions, z_student, z_teacher)``: the chunk's sample ids, their completion ids and
    float32 logits ``[B, T, V]`` (row b's first ``len(completions[b])`` positions are real tokens; both
    views share the completions, so positions align)."""
    model.eval()
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sample_ids = list(sample_ids)
    for i in range(0, len(sample_ids), batch_size):
        chunk = sample_ids[i:i + batch_size]
        comps = [example_completion(tokenizer, prompts.samples[s]["reference"]) for s in chunk]
        z = {}
        for view in ("student", "teacher"):
            ps = [prompts.get(s) if view == "student" else
                  prompts.get(s, "teacher", view_hint(prompts, s, components, hint_fn)) for s in chunk]
            b = T.to_device(T.collate(ps, comps, pad, model.config), device)
            z[view] = T.completion_logits(model, b)
        yield chunk, comps, z["student"], z["teacher"]


def span_logps(tokenizer, logits: torch.Tensor, completions: Sequence[Sequence[int]]) -> tuple[list[float], list[float]]:
    """Per row: (sum of log p over the ``<answer>…</answer>`` span, sum over the whole completion)."""
    dev = logits.device
    tokens = torch.zeros(logits.shape[:2], dtype=torch.long, device=dev)
    for r, c in enumerate(completions):
        tokens[r, :len(c)] = torch.as_tensor(c, dtype=torch.long, device=dev)
    lp = T.token_logprobs(logits, tokens)
    ans, full = [], []
    for r, c in enumerate(completions):
        s, e = answer_span(tokenizer, c)
        ans.append(float(lp[r, s:e].sum()))
        full.append(float(lp[r, :len(c)].sum()))
    return ans, full


class MarginAccumulator:
    """Collects per-sample answer / reference log-probabilities of both views; :meth:`summary` is the
    dict :func:`answer_margin` returns."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ans = {"student": [], "teacher": []}
        self.full = {"student": [], "teacher": []}
        self.n_tokens: list[int] = []
        self.ids: list[str] = []

    def add(self, chunk, completions, z_student, z_teacher) -> None:
        self.ids += list(chunk)
        self.n_tokens += [len(c) for c in completions]
        for view, z in (("student", z_student), ("teacher", z_teacher)):
            a, f = span_logps(self.tokenizer, z, completions)
            self.ans[view] += a
            self.full[view] += f

    def per_sample(self) -> dict[str, float]:
        """sample id → answer margin (teacher − student log p of the answer span)."""
        return {s: t - u for s, t, u in zip(self.ids, self.ans["teacher"], self.ans["student"])}

    def summary(self) -> dict:
        st, te = np.array(self.ans["student"]), np.array(self.ans["teacher"])
        fs, ft = np.array(self.full["student"]), np.array(self.full["teacher"])
        nan = float("nan")
        if not len(st):
            return {"n": 0, "margin_mean": nan, "margin_positive": nan, "student_answer_logp": nan,
                    "teacher_answer_logp": nan, "reference_margin_mean": nan, "reference_margin_positive": nan,
                    "student_reference_nll": nan}
        return {"n": len(st), "margin_mean": float((te - st).mean()), "margin_positive": float(((te - st) > 0).mean()),
                "student_answer_logp": float(st.mean()), "teacher_answer_logp": float(te.mean()),
                "reference_margin_mean": float((ft - fs).mean()), "reference_margin_positive": float(((ft - fs) > 0).mean()),
                "student_reference_nll": float(-fs.sum() / max(1, sum(self.n_tokens)))}


@torch.no_grad()
def answer_margin(model, tokenizer, prompts: T.Prompts, sample_ids: Sequence[str], batch_size: int = 16,
                  device="cpu", components: Sequence[str] | None = None,
                  hint_fn: Callable[[dict], str] | None = None) -> dict:
    """Per-sample log p(verified answer span | prompt, reference think) in the teacher view (hint) minus
    the student view; returns the mean margin, the share of samples with a positive margin, the mean
    student / teacher answer log-probabilities (sums over the span's tokens), and the same margin for
    the whole reference completion (``reference_margin_*``: think + answer, where the hint's window and
    key-frame times also help)."""
    acc = MarginAccumulator(tokenizer)
    for chunk, comps, zs, zt in paired_logits(model, tokenizer, prompts, sample_ids, batch_size, device,
                                              components, hint_fn):
        acc.add(chunk, comps, zs, zt)
    return acc.summary()


def run(params: dict, samples_path: str, frames_paths: Sequence[str], policy_in: str, out: str,
        metrics_path: str | None = None, progress: bool = True, eval_margin: bool = True) -> dict:
    from tqdm import tqdm

    scfg = cfgmod.section("sft", params.get("sft"))  # every key and its default: workflow/schemas/config.schema.yaml
    components = cfgmod.section("teacher", params.get("teacher"))["hint"]
    prompt_cfg = cfgmod.section("prompt", params.get("prompt"))
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = T.load_tokenizer(policy_in)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    samples = {r["sample_id"]: r for r in T.read_rows([samples_path])}
    frames = {r["sample_id"]: r for r in T.read_rows(frames_paths)}
    train_ids = sorted(s for s in frames if samples[s]["split"] == "train" and samples[s].get("reference"))
    eval_ids = sorted(s for s in frames if samples[s]["split"] == "eval" and samples[s].get("reference"))
    if not train_ids:
        raise SystemExit(f"visd sft: no train sample with a reference in {samples_path} / {list(frames_paths)}")
    margin_ids = eval_ids[::-(-len(eval_ids) // MARGIN_SAMPLES)] if eval_ids else []
    train_margin_ids = train_ids[::-(-len(train_ids) // MARGIN_SAMPLES)]
    prompts = SharedPrompts(tokenizer, samples, frames, prompt_cfg, cache_size=4 * (len(train_ids) + len(margin_ids)))
    feedback = perturbed_feedback(samples, train_ids, seed)
    alternatives = counterfactual_answers(samples, train_ids)
    completions = {s: example_completion(tokenizer, samples[s]["reference"]) for s in train_ids}

    model = T.load_model(policy_in).to(device)
    model.config.use_cache = False
    before = answer_margin(model, tokenizer, prompts, margin_ids, device=device, components=components) if (eval_margin and margin_ids) else None
    t_copy = time.perf_counter()
    copy_rows = copy_warmup(model, tokenizer, samples, train_ids, feedback, components,
                            int(scfg["copy_warmup_steps"]), int(scfg["copy_batch_size"]),
                            float(scfg["copy_lr"] or scfg["lr"]), seed, device, progress) if scfg["copy_warmup_steps"] else []
    t_copy = time.perf_counter() - t_copy
    after_copy = answer_margin(model, tokenizer, prompts, margin_ids, device=device, components=components) if (copy_rows and eval_margin and margin_ids) else None
    if after_copy:
        print(f"[sft] copy warm-up {len(copy_rows)} steps in {t_copy:.1f} s, loss {copy_rows[0]['loss']:.3f} → {copy_rows[-1]['loss']:.3f}; "
              f"eval answer margin {after_copy['margin_mean']:.3f} (positive {after_copy['margin_positive']:.2f})", file=sys.stderr)
    n_ind, ind_len = int(scfg["induction_rows"]), int(scfg["induction_length"])
    t_ind = time.perf_counter()
    ind_rows = induction_pretrain(model, tokenizer, int(scfg["induction_steps"]), 32, ind_len, float(scfg["lr"]),
                                  seed, progress) if scfg["induction_steps"] else []
    t_ind = time.perf_counter() - t_ind
    ind_before = induction_accuracy(model, tokenizer, ind_len, seed) if (ind_rows or n_ind) else None
    if ind_rows:
        print(f"[sft] induction pre-training {len(ind_rows)} steps in {t_ind:.1f} s, loss {ind_rows[0]['loss']:.3f} → "
              f"{ind_rows[-1]['loss']:.3f}, copy accuracy {ind_before:.3f}", file=sys.stderr)
    ind_pool = induction_pool(tokenizer) if n_ind else None
    model.train()
    optimizer = T.make_optimizer(model, scfg["lr"], weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bs = min(scfg["batch_size"], len(train_ids))
    n_paired = int(scfg["paired_teacher"])
    aw = float(scfg["answer_weight"])
    cf_weight = aw if scfg["counterfactual_weight"] is None else float(scfg["counterfactual_weight"])
    cf_tasks = None if scfg["counterfactual_tasks"] is None else set(scfg["counterfactual_tasks"])
    cf_ok = {s: cf_tasks is None or samples[s]["task_type"] in cf_tasks for s in train_ids}
    rows, order, t_start = [], [], time.perf_counter()
    bar = tqdm(range(scfg["steps"]), desc="sft", unit="step", disable=not progress, file=sys.stderr)
    for step in bar:
        t0 = time.perf_counter()
        if len(order) < bs:  # a seeded permutation per epoch
            order += np.random.default_rng([seed, 5, step]).permutation(len(train_ids)).tolist()
        idx, order = order[:bs], order[bs:]
        rng = np.random.default_rng([seed, 6, step])
        teacher_view = rng.random(bs) < scfg["teacher_view_fraction"]
        with_fb = rng.random(bs) < 0.5
        swap = rng.random(bs) < float(scfg["counterfactual"])
        fresh = (rng.random(bs) < float(scfg["counterfactual_random"]) if scfg["counterfactual_random"]
                 else np.zeros(bs, dtype=bool))  # no draw when off: the default's random stream is unchanged
        batch_prompts, targets, hinted, row_w = [], [], [], []
        for j, i in enumerate(idx):
            sid = train_ids[i]
            hinted.append(bool(teacher_view[j]))
            if not teacher_view[j]:
                batch_prompts.append(prompts.get(sid))
                targets.append(completions[sid])
                row_w.append(1.0)
                continue
            # teacher view: the hint the teacher stage will show (teacher.hint components). Counterfactual
            # examples state another possible answer as verified and end the reference with it: the
            # answer then follows the hint, not the (memorised) video.
            hint, target, cf = teacher_example(tokenizer, samples[sid], completions[sid], alternatives[sid],
                                               bool(swap[j]) and cf_ok[sid], bool(fresh[j]),
                                               feedback.get(sid) if with_fb[j] else None, components, rng,
                                               bool(scfg["counterfactual_think"]))
            batch_prompts.append(prompts.get(sid, "teacher", hint))
            targets.append(target)
            row_w.append(cf_weight if cf else aw)
        if n_paired:  # the same samples' teacher views: each pair differs only by the hint (own rng stream)
            prng = np.random.default_rng([seed, 8, step])
            pool = [i for j, i in enumerate(idx) if not teacher_view[j]] or list(idx)
            pool = [i for i in pool if cf_ok[train_ids[i]]] or pool  # counterfactual_tasks' samples first
            for i in prng.choice(pool, min(n_paired, len(pool)), replace=False):
                sid = train_ids[int(i)]
                u_cf, u_fresh, u_fb = prng.random(3)
                hint, target, cf = teacher_example(tokenizer, samples[sid], completions[sid], alternatives[sid],
                                                   u_cf < float(scfg["counterfactual"]) and cf_ok[sid],
                                                   u_fresh < float(scfg["counterfactual_random"]),
                                                   feedback.get(sid) if u_fb < 0.5 else None, components, prng,
                                                   bool(scfg["counterfactual_think"]))
                batch_prompts.append(prompts.get(sid, "teacher", hint))
                targets.append(target)
                hinted.append(True)
                row_w.append(cf_weight if cf else aw)
        for _ in range(int(scfg["copy_mix"])):  # text-only copy examples keep the hint-reading alive
            sid = train_ids[int(rng.integers(len(train_ids)))]
            p, c, _ = copy_example(tokenizer, samples[sid], rng, components, feedback.get(sid) if rng.random() < 0.5 else None)
            batch_prompts.append(p)
            targets.append(c)
            hinted.append(True)
            row_w.append(cf_weight)
        batch = T.collate(batch_prompts, targets, pad_id, model.config)
        answer_mask = torch.zeros_like(batch.mask)  # answer spans of the rows whose hint states the answer
        for r, (c, h) in enumerate(zip(targets, hinted)):
            if h:
                a, b = answer_span(tokenizer, c)
                answer_mask[r, a:b] = a > 0 or b < len(c)
        batch = T.to_device(batch, device)
        answer_mask = answer_mask.to(device)
        lr = T.lr_at(step, scfg["lr"], scfg["warmup_steps"], scfg["steps"])
        T.set_lr(optimizer, lr)
        with autocast:
            logits = T.completion_logits(model, batch)
        objective = weighted_sft_loss(logits, batch.tokens, batch.mask, answer_mask,
                                      aw if cf_weight == aw else torch.tensor(row_w))
        objective.backward()
        ind_loss = None
        if n_ind:  # induction rows keep the copy circuit alive: the SFT at this lr erases it otherwise
            ind_loss, _ = induction_loss(model, induction_batch(ind_pool, np.random.default_rng([seed, 12, 10**6 + step]),
                                                                n_ind, ind_len))
            ind_loss.backward()
        if aw == 1.0 and cf_weight == aw:
            loss = objective
        else:  # the logged loss stays the plain token-mean cross-entropy
            with torch.no_grad():
                loss = losses.sft_cross_entropy(logits, batch.tokens, batch.mask)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        n_tok = int(batch.inputs["attention_mask"].sum())
        rows.append({"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                     "teacher_view": int(teacher_view.sum()), "tokens": n_tok, "tokens_per_s": n_tok / dt,
                     "elapsed_s": time.perf_counter() - t_start})
        if ind_loss is not None:
            rows[-1]["induction_loss"] = ind_loss.item()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    after = answer_margin(model, tokenizer, prompts, margin_ids, device=device, components=components) if (eval_margin and margin_ids) else None
    # the same margin on training samples (memorised videos: the student view knows their answers)
    after_train = answer_margin(model, tokenizer, prompts, train_margin_ids, device=device, components=components) if eval_margin else None
    info = {"role": "sft", "global_step": 0, "sft_steps": scfg["steps"], "batch_size": bs, "lr": scfg["lr"],
            "train_samples": len(train_ids), "final_loss": rows[-1]["loss"] if rows else None,
            "seconds": round(time.perf_counter() - t_start, 1), "answer_margin_before": before,
            "answer_margin_after": after, "answer_margin_train_after": after_train, "sft_options": scfg, "copy_warmup": {"seconds": round(t_copy, 1),
            "final_loss": copy_rows[-1]["loss"] if copy_rows else None, "answer_margin_after": after_copy},
            "induction": {"seconds": round(t_ind, 1), "steps": len(ind_rows), "rows_per_step": n_ind,
                          "accuracy_before_sft": ind_before,
                          "accuracy_after_sft": induction_accuracy(model, tokenizer, ind_len, seed) if (ind_rows or n_ind) else None}}
    T.save_hf_folder(model, policy_in, out, info)
    if metrics_path:
        write_parquet(pa.Table.from_pylist(rows), metrics_path)
    print(f"[sft] {scfg['steps']} steps × {bs} in {info['seconds']} s, loss {rows[0]['loss'] if rows else float('nan'):.3f}"
          f" → {info['final_loss'] if rows else float('nan'):.3f}; eval answer margin (teacher − student log p) "
          f"{before and round(before['margin_mean'], 3)} → {after and round(after['margin_mean'], 3)}; wrote {out}",
          file=sys.stderr)
    return info


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="config JSON ({seed, sft, prompt, teacher.hint}) or @file")
    p.add_argument("--samples", required=True, help="results/samples.parquet")
    p.add_argument("--frames", nargs="+", required=True, help="results/frames/shard-*.parquet")
    p.add_argument("--policy-in", required=True, help="HF folder of the initial model (models/init)")
    p.add_argument("--out", required=True, help="HF folder to write (models/sft)")
    p.add_argument("--metrics", default=None, help="per-step metrics parquet")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        params = cfgmod.parse_params(args.params)
    except cfgmod.ConfigError as e:
        print(f"visd sft: {e}", file=sys.stderr)
        return 2
    run(params, args.samples, args.frames, args.policy_in, args.out, args.metrics, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="visd sft")
    configure_parser(p)
    sys.exit(main(p.parse_args()))
