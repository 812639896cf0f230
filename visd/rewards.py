"""Rule-based rewards of the Open-o3 Video / VISD set (METHODS §5), summed with weight 1.

Every term is a small pure function ``r_<term>(completion, sample[, progress]) -> float in [0, 1]``;
``completion`` is the raw text or a :class:`visd.grounding.Parsed`, ``sample`` a row of
``samples.parquet`` as a dict (``visd.tables.SAMPLES``). A malformed completion scores 0 on the
affected term and never raises. A term that does not apply to a sample scores 0.

Which term applies to which sample (✓ = scored, · = always 0)::

    term                   mcq     open    numeric  temporal  spatial  spatiotemporal
    R1 accuracy            letter  ROUGE   exact    ·         ·        ·
    R2 temporal_iou        ·       ·       ·        ✓         ·        ·
    R3 box_iou             ·       ·       ·        ·         ✓        ✓ (vIoU)
    R4 think_in_window     ✓ when the sample has an answer_window (temporal, spatiotemporal, MCQ with a window)
    R5 think_near_keyframes  ✓ when the sample has key frames
    R6 think_box_iou       ✓ when the sample has key frames with object boxes
    R7 format              ✓ always

``total`` is the plain sum of the seven terms (weights 1, METHODS §1.2); non-applicable terms add 0.
Totals are therefore on different scales for different task types, which is harmless: advantages
are normalised within a group of rollouts of one prompt (METHODS §1.3). :func:`applicable_terms`
returns the ✓ set of a sample, for reports that average a term over the rows it applies to.

Decisions (read from the Open-o3 Video / VISD ``reward_func.py`` where METHODS is silent):

* R1 on temporal / spatial / spatio-temporal tasks is 0, as in Open-o3 (``temporal QA`` and ``visual
  QA`` get ``question_type = "none"``): their answers are scored by R2 / R3 instead.
* R1 numeric: exact match after float parsing (``"3"`` = ``"3.0"`` = ``"three"``), compared with
  ``math.isclose(rel_tol=1e-9, abs_tol=1e-9)`` so that only float round-off is forgiven.
* R1 open: mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 with lower-case ``[a-z0-9]+`` word tokens and no
  stemming (Open-o3 uses the ``rouge_score`` Porter stemmer). ROUGE-2 is left out of the mean when
  the reference has fewer than two tokens (no bigram to match), so an exact one-word answer scores 1
  (``rouge_score`` would give it 2/3).
* R2 only on ``temporal`` samples; a spatio-temporal answer is a set of boxes, scored by R3, while its
  window feeds R4. Invalid, reversed or non-finite spans score 0.
* R3 spatial: the answer box against the ground-truth box of the key frame nearest the time asked in
  the question (``at 2.5 s``; all key frames when no time is written), restricted to the objects whose
  names share the most content words with the question; best IoU over the remaining candidates.
  R3 spatio-temporal: V-STaR vIoU — mean over the ground-truth key-frame boxes of the IoU with the
  predicted box at that whole second (:func:`visd.grounding.second_key`), 0 where it is missing.
* R4, R5: computed on every ``<t>`` time inside think; no think times → 0. Progress ``p`` is clipped to
  [0, 1]; σ = 4(1 − p) for p < 0.75, else 1.
* R6: every full claim ``<obj>name</obj><box>..</box>at<t>..</t>s`` in think (name and time present)
  is matched to the nearest key frame with |Δt| ≤ 1 s (VISD's corrected gate); among that frame's
  objects whose name matches softly (:func:`names_match`: a shared content word, so "circle" ~ "red
  circle"), the best IoU counts; claims without a key frame, a matching object or a valid box count 0.
  The mean runs over all full claims (VISD's default normalisation ``all``). VISD averages over
  several ground-truth boxes of one name; here each object box is a candidate and the best one counts.
* R7: 0 unless ``<think>`` and ``<answer>`` are present and every tag is balanced
  (:attr:`visd.grounding.Parsed.tags_balanced`); 1.0 with grounded evidence, else 0.5. Grounded
  evidence = at least one full claim with a valid box; on samples with an answer window also ≥ 2
  think timestamps (Open-o3's rule for temporal QA); on samples whose key frames carry times but no
  boxes (e.g. "how many shapes at 1.5 s?" when there are none) one think timestamp; samples with
  neither key frames nor a window have nothing to ground and get 1.0 (Open-o3's rule for general
  video QA).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from visd.grounding import (
    Parsed,
    parse,
    parse_letter,
    parse_number,
    parse_time,
    second_key,
)

REWARD_TERMS = (
    "accuracy",
    "temporal_iou",
    "box_iou",
    "think_in_window",
    "think_near_keyframes",
    "think_box_iou",
    "format",
)

_MAX_TOKENS = 4096  # ROUGE inputs are truncated to this many tokens (LCS is quadratic)


# ------------------------------------------------------------------------------------------ metrics
def _floats(x: Any, n: int) -> list[float] | None:
    """``x`` as exactly ``n`` finite floats, else ``None`` (lists, tuples, numpy arrays)."""
    if x is None or isinstance(x, (str, bytes)):
        return None
    try:
        vals = [float(v) for v in x]
    except (TypeError, ValueError, OverflowError):
        return None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        return None
    return vals


def temporal_iou(pred, gt) -> float:
    """tIoU = |[s,e] ∩ [s*,e*]| / (max(e,e*) − min(s,s*)) (METHODS §6).

    0 when either span is not two finite numbers, is reversed (s > e) or the union is empty.
    """
    p, g = _floats(pred, 2), _floats(gt, 2)
    if p is None or g is None or p[0] > p[1] or g[0] > g[1]:
        return 0.0
    union = max(p[1], g[1]) - min(p[0], g[0])
    if union <= 0:
        return 0.0
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    return min(1.0, max(0.0, inter / union))


def box_iou(pred, gt) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes; 0 for non-finite, wrong-arity or degenerate boxes (x2 ≤ x1 or y2 ≤ y1)."""
    p, g = _floats(pred, 4), _floats(gt, 4)
    if p is None or g is None or p[2] <= p[0] or p[3] <= p[1] or g[2] <= g[0] or g[3] <= g[1]:
        return 0.0
    iw = max(0.0, min(p[2], g[2]) - max(p[0], g[0]))
    ih = max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    if not union > 0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


def tokens(text: str | None) -> list[str]:
    """Lower-case word tokens ``[a-z0-9]+`` (everything else separates words)."""
    return re.findall(r"[a-z0-9]+", str(text or "").lower())[:_MAX_TOKENS]


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap <= 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n_f(pred: str, ref: str, n: int = 1) -> float:
    """ROUGE-N F1: clipped n-gram overlap; P = overlap / #pred n-grams, R = overlap / #ref n-grams."""
    tp, tr = tokens(pred), tokens(ref)
    gp = Counter(tuple(tp[i:i + n]) for i in range(len(tp) - n + 1))
    gr = Counter(tuple(tr[i:i + n]) for i in range(len(tr) - n + 1))
    overlap = sum((gp & gr).values())
    return _f1(overlap, sum(gp.values()), sum(gr.values()))


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_f(pred: str, ref: str) -> float:
    """ROUGE-L F1: P = LCS / #pred tokens, R = LCS / #ref tokens."""
    tp, tr = tokens(pred), tokens(ref)
    return _f1(_lcs(tp, tr), len(tp), len(tr))


def rouge_mean_f(pred: str, ref: str) -> float:
    """Mean of ROUGE-1/2/L F1 (R1 for free-form answers); ROUGE-2 is dropped when ``ref`` has < 2 tokens."""
    scores = [rouge_n_f(pred, ref, 1), rouge_l_f(pred, ref)]
    if len(tokens(ref)) >= 2:
        scores.append(rouge_n_f(pred, ref, 2))
    return sum(scores) / len(scores)


_STOP = frozenset(("a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "with", "is", "are", "this", "that",
                   "its"))


def names_match(pred: str | None, gt: str | None) -> bool:
    """Soft object-name match: the names share a content word (lower-case, stop words ignored)."""
    a = set(tokens(pred)) - _STOP
    b = set(tokens(gt)) - _STOP
    return bool(a & b)


# ------------------------------------------------------------------------------------------ sample access
def _seq(x: Any) -> list:
    if x is None or isinstance(x, (str, bytes, Mapping)):
        return []
    try:
        return list(x)
    except TypeError:
        return []


def gt_window(sample: Mapping[str, Any]) -> tuple[float, float] | None:
    """The sample's valid answer window ``(s, e)``, else ``None``."""
    w = _floats(sample.get("answer_window"), 2)
    return (w[0], w[1]) if w is not None and w[0] <= w[1] else None


def key_frames(sample: Mapping[str, Any]) -> list[tuple[float, list[tuple[str, list[float]]]]]:
    """``[(time, [(name, box), ...]), ...]`` with finite times; objects without a valid box are dropped."""
    out = []
    for kf in _seq(sample.get("key_frames")):
        if not isinstance(kf, Mapping):
            continue
        try:
            t = float(kf.get("time"))
        except (TypeError, ValueError):
            continue
        if not math.isfinite(t):
            continue
        objs = []
        for o in _seq(kf.get("objects")):
            if isinstance(o, Mapping):
                b = _floats(o.get("box"), 4)
                if b is not None:
                    objs.append((str(o.get("name") or ""), b))
        out.append((t, objs))
    return out


def applicable_terms(sample: Mapping[str, Any]) -> frozenset[str]:
    """Names of the terms scored for this sample (the ✓ cells of the module table)."""
    tt = sample.get("task_type")
    kfs = key_frames(sample)
    terms = {"format"}
    if tt in ("mcq", "open", "numeric"):
        terms.add("accuracy")
    if tt == "temporal" and gt_window(sample) is not None:
        terms.add("temporal_iou")
    if tt in ("spatial", "spatiotemporal") and any(objs for _, objs in kfs):
        terms.add("box_iou")
    if gt_window(sample) is not None:
        terms.add("think_in_window")
    if kfs:
        terms.add("think_near_keyframes")
    if any(objs for _, objs in kfs):
        terms.add("think_box_iou")
    return frozenset(terms)


def _parsed(completion) -> Parsed:
    return completion if isinstance(completion, Parsed) else parse(completion)


# ------------------------------------------------------------------------------------------ R1..R7
def r_accuracy(completion, sample: Mapping[str, Any]) -> float:
    """R1: MCQ letter match; numeric exact after float parse; open mean ROUGE-1/2/L F; else 0."""
    p = _parsed(completion)
    tt = sample.get("task_type")
    if p.answer is None:
        return 0.0
    gt = str(sample.get("answer") or "")
    if tt == "mcq":
        want = parse_letter(gt)
        return 1.0 if want is not None and p.answer_letter == want else 0.0
    if tt == "numeric":
        want = parse_number(gt.replace(",", ""))
        got = p.answer_number
        if want is None or got is None:
            return 0.0
        return 1.0 if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9) else 0.0
    if tt == "open":
        if not tokens(gt):
            return 0.0
        return min(1.0, max(0.0, rouge_mean_f(p.answer, gt)))
    return 0.0


def r_temporal_iou(completion, sample: Mapping[str, Any]) -> float:
    """R2: tIoU of the answer window with ``answer_window`` (temporal samples only)."""
    if sample.get("task_type") != "temporal":
        return 0.0
    w = gt_window(sample)
    p = _parsed(completion)
    if w is None or p.answer_window is None:
        return 0.0
    return temporal_iou(p.answer_window, w)


_ASKED_TIME = re.compile(r"\bat\s+(\d{1,6}(?::\d{1,2}){0,2}(?:\.\d{1,9})?)\s*(?:s\b|sec|second)", re.IGNORECASE)


def _spatial_candidates(sample: Mapping[str, Any]) -> list[list[float]]:
    kfs = [(t, objs) for t, objs in key_frames(sample) if objs]
    if not kfs:
        return []
    m = _ASKED_TIME.search(str(sample.get("question") or ""))
    asked = parse_time(m.group(1)) if m else None
    if asked is not None:
        best = min(abs(t - asked) for t, _ in kfs)
        kfs = [(t, objs) for t, objs in kfs if abs(t - asked) == best]
    objs = [o for _, os_ in kfs for o in os_]
    q = set(tokens(sample.get("question"))) - _STOP
    overlap = [len((set(tokens(name)) - _STOP) & q) for name, _ in objs]
    best = max(overlap)
    return [b for (_, b), k in zip(objs, overlap, strict=True) if k == best]


def r_box_iou(completion, sample: Mapping[str, Any]) -> float:
    """R3: spatial — answer box vs the asked key-frame box; spatio-temporal — vIoU over key frames."""
    tt = sample.get("task_type")
    p = _parsed(completion)
    if p.answer is None:
        return 0.0
    if tt == "spatial":
        if p.answer_box is None:
            return 0.0
        return max((box_iou(p.answer_box, g) for g in _spatial_candidates(sample)), default=0.0)
    if tt == "spatiotemporal":
        gts = [(t, objs) for t, objs in key_frames(sample) if objs]
        if not gts:
            return 0.0
        total = 0.0
        for t, objs in gts:
            pred = p.answer_boxes_by_second.get(second_key(t))
            total += max((box_iou(pred, b) for _, b in objs), default=0.0) if pred is not None else 0.0
        return total / len(gts)
    return 0.0


def r_think_in_window(completion, sample: Mapping[str, Any]) -> float:
    """R4: fraction of think timestamps inside the ground-truth window (inclusive)."""
    w = gt_window(sample)
    times = _parsed(completion).think_times
    if w is None or not times:
        return 0.0
    return sum(1 for t in times if w[0] <= t <= w[1]) / len(times)


def sigma_at(progress: float) -> float:
    """R5's σ: 4(1 − p) while p < 0.75, else 1 (p clipped to [0, 1]; non-finite p counts as 0)."""
    p = float(progress) if progress is not None and math.isfinite(float(progress)) else 0.0
    p = min(1.0, max(0.0, p))
    return 4.0 * (1.0 - p) if p < 0.75 else 1.0


def r_think_near_keyframes(completion, sample: Mapping[str, Any], progress: float = 0.0) -> float:
    """R5: mean over think timestamps of exp(−d²/2σ²), d = distance to the nearest key-frame time."""
    kts = [t for t, _ in key_frames(sample)]
    times = _parsed(completion).think_times
    if not kts or not times:
        return 0.0
    s = sigma_at(progress)
    total = 0.0
    for t in times:
        d = min(abs(t - k) for k in kts)
        total += math.exp(-(d * d) / (2 * s * s))
    return min(1.0, total / len(times))


def r_think_box_iou(completion, sample: Mapping[str, Any]) -> float:
    """R6: mean over full think claims of the best IoU with a name-matched box of the key frame within 1 s."""
    kfs = key_frames(sample)
    claims = [c for c in _parsed(completion).evidence if c.name and c.time is not None]
    if not kfs or not claims:
        return 0.0
    total = 0.0
    for c in claims:
        near = [(abs(t - c.time), i) for i, (t, _) in enumerate(kfs) if abs(t - c.time) <= 1.0]
        if not near or c.box is None:
            continue
        _, i = min(near)
        total += max((box_iou(c.box, b) for name, b in kfs[i][1] if names_match(c.name, name)), default=0.0)
    return total / len(claims)


def r_format(completion, sample: Mapping[str, Any]) -> float:
    """R7: 0 unless think and answer are present and all tags balanced; 1.0 with grounded evidence, else 0.5."""
    p = _parsed(completion)
    if not (p.has_think and p.has_answer and p.tags_balanced):
        return 0.0
    window = gt_window(sample) is not None
    kfs = key_frames(sample)
    if not kfs and not window:  # nothing to ground against
        return 1.0
    if any(c.grounded for c in p.evidence):
        return 1.0
    if window and len(p.think_times) >= 2:  # Open-o3's rule for temporal QA
        return 1.0
    if kfs and not any(objs for _, objs in kfs) and p.think_times:  # key-frame times without boxes
        return 1.0
    return 0.5


# ------------------------------------------------------------------------------------------ all terms
def compute_rewards(completion, sample: Mapping[str, Any], progress: float = 0.0) -> dict[str, float]:
    """All terms of :data:`REWARD_TERMS` plus ``total`` (their sum, weights 1).

    Raises ``ValueError`` only for a sample whose ``task_type`` is unknown (a data bug, not a
    completion problem); any completion text is scored.
    """
    tt = sample.get("task_type")
    if tt not in ("mcq", "open", "numeric", "temporal", "spatial", "spatiotemporal"):
        raise ValueError(
            f"sample {sample.get('sample_id')!r}: field task_type={tt!r} is not one of visd.tables.TASK_TYPES; "
            "re-run prepare_data on the annotations"
        )
    p = _parsed(completion)
    out = {
        "accuracy": r_accuracy(p, sample),
        "temporal_iou": r_temporal_iou(p, sample),
        "box_iou": r_box_iou(p, sample),
        "think_in_window": r_think_in_window(p, sample),
        "think_near_keyframes": r_think_near_keyframes(p, sample, progress),
        "think_box_iou": r_think_box_iou(p, sample),
        "format": r_format(p, sample),
    }
    out = {k: float(v) if math.isfinite(v) else 0.0 for k, v in out.items()}
    out["total"] = sum(out[k] for k in REWARD_TERMS)
    return out


def fixed_scale(terms: Mapping[str, float], completion, sample: Mapping[str, Any]) -> dict[str, float]:
    """R5 and the total at training progress 0 (σ = 4, the tolerance of phase 0), from ``terms`` =
    :func:`compute_rewards` of the same completion at any progress.

    R5's σ shrinks with progress (4 → 1), so the same completion earns less R5 in a later phase: a
    phase's mean ``total`` falls by construction even when the policy does not change. ``total_p0``
    swaps R5 for its value at σ = 4 and is the total to compare across phases; ``total`` stays the
    training signal (METHODS §5).
    """
    r5 = float(r_think_near_keyframes(completion, sample, 0.0))
    r5 = r5 if math.isfinite(r5) else 0.0
    rest = sum(terms[k] for k in REWARD_TERMS if k != "think_near_keyframes")
    return {"think_near_keyframes_p0": r5, "total_p0": rest + r5}

