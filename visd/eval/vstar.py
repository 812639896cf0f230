"""V-STaR metrics (METHODS §6) as pure functions over raw completion texts and ground truth.

V-STaR asks three questions about one video clip: *what* (open answer), *when* (ground-truth window
``[s*, e*]`` in seconds) and *where* (ground-truth boxes ``{second: [x1, y1, x2, y2]}`` on key frames).
Two reasoning chains share the *what* answer:

* chain 1 = what → when → where: the *where* question is asked with the ground-truth window;
* chain 2 = what → where → when: the *when* question is asked with the ground-truth boxes.

Metrics (every item is in every denominator; a missing or unparsable prediction scores 0):

* **Acc** — an LLM judge scores the *what* prediction 0–3 against the reference (:func:`judge_messages`,
  :func:`parse_judge_score`); the item is correct iff score ≥ 2. Without a judge, **Acc_offline**
  (:func:`fallback_correct`): normalised exact match or ROUGE-L F ≥ 0.5 — a different number, reported
  under a different name, never mixed with judge scores.
* **tIoU** = |[s, e] ∩ [s*, e*]| / (max(e, e*) − min(s, s*)) per item (:func:`temporal_iou`); a reversed,
  zero-length or non-finite prediction scores 0. Dataset tIoU_c = mean; R@x_c = fraction of items with
  tIoU ≥ x, x ∈ {0.3, 0.5, 0.7}.
* **vIoU** per item = (1/|T*|) Σ_{t ∈ T*} IoU(b_t, b*_t) over the ground-truth seconds T*, with IoU = 0
  where the prediction has no box at t (:func:`viou`). Dataset vIoU_c = mean; AP@x_c = fraction of items
  with vIoU ≥ x, x ∈ {0.1, 0.3, 0.5, 0.7, 0.9}.
* **AM_c** = (Acc + tIoU_c + vIoU_c) / 3 and **LGM_c** = −[ln(1 − Acc) + ln(1 − tIoU_c) + ln(1 − vIoU_c)] / 3
  on the dataset means (fractions); mAM = (AM_1 + AM_2)/2, mLGM = (LGM_1 + LGM_2)/2. A term equal to 1
  would make LGM infinite, so each term is clipped to 1 − 10⁻⁶ first, i.e. 1 − x is floored at 10⁻⁶
  (its −ln term is then at most −ln 10⁻⁶ ≈ 13.82, so LGM stays finite; it is not bounded by 100 %).

Every reported number is a percentage (fraction × 100, float, unrounded). Threshold tests (R@x, AP@x)
allow 1e-9 of float round-off, so that an IoU that is x on paper counts as reaching x (the span
[0.1, 0.3] against [0.1, 0.5] has tIoU 0.5 on paper but 0.49999999999999994 in floats).

Deliberately *not* reproduced from the official ``eval.py`` (METHODS §6): prompts turned into tuples
by trailing commas, the 0–4 scale of its README (the judge here scores 0–3) and items without an answer
being skipped while the denominator still counts them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

from visd.grounding import MAX_CHARS, parse_boxes_by_second, parse_window, second_key
from visd.rewards import box_iou, rouge_l_f, tokens
from visd.rewards import temporal_iou as _rewards_temporal_iou

R_THRESHOLDS = (0.3, 0.5, 0.7)  # R@x on tIoU
AP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)  # AP@x on vIoU
CHAINS = (1, 2)
JUDGE_CORRECT_MIN = 2  # judge score ≥ 2 (of 0–3) is correct
JUDGE_SCORES = (0, 1, 2, 3)
ROUGE_L_MIN = 0.5  # offline fallback: ROUGE-L F ≥ 0.5
LGM_CLIP = 1e-6  # LGM terms are clipped to 1 − LGM_CLIP
THRESHOLD_TOL = 1e-9
DURATION_BUCKETS = (("short", 0.0, 60.0), ("medium", 60.0, 180.0), ("long", 180.0, math.inf))
MAX_JUDGE_PREDICTION_CHARS = 4_000  # longer predictions are cut before they go to the judge

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANY_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]{0,31}>")


# ------------------------------------------------------------------------------------------ parsing
def _text(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, (bytes, bytearray)):
        x = bytes(x[: MAX_CHARS * 4]).decode("utf-8", errors="replace")
    return str(x)[:MAX_CHARS]


def answer_text(completion: str) -> str:
    """The stripped content of the last complete ``<answer>…</answer>`` block, else the stripped text.

    ``None`` gives ``""``; only the first :data:`visd.grounding.MAX_CHARS` characters are read.
    """
    text = _text(completion)
    blocks = _ANSWER_RE.findall(text)
    return (blocks[-1] if blocks else text).strip()


def parse_span(text: str) -> tuple[float, float] | None:
    """``(s, e)`` seconds from the answer of ``text`` (:func:`answer_text`), else ``None``.

    After removing tags (``<t>``, ``</t>`` …) the answer must hold exactly two times — plain seconds
    (``1.5``, ``3s``), ``mm:ss`` or ``hh:mm:ss`` (``00:01 to 01:02.5``): ``From <t>1.5</t>s to <t>3</t>s``,
    ``from 1.5s to 3.0 s``, ``1.5-3``, ``[1.5, 3]``. Zero, one or three and more numbers, negative times
    and ``mm:ss`` fields ≥ 60 give ``None``. The written order is kept: a reversed span is returned
    reversed (:func:`temporal_iou` scores it 0). Uses :func:`visd.grounding.parse_window`, the parser of
    the training reward R2.
    """
    a = _ANY_TAG_RE.sub(" ", answer_text(text))
    return parse_window(a) if a else None


def parse_boxes(text: str) -> dict[int, list[float]] | None:
    """``{second: [x1, y1, x2, y2]}`` from the answer of ``text`` (:func:`answer_text`), else ``None``.

    Accepts JSON and Python-literal-like dicts: ``{"2": [..], "3.0": [..]}``, ``{2: [..]}``, single
    quotes, trailing commas, any whitespace, text around the braces. Keys are times in seconds rounded
    half up to whole seconds (:func:`visd.grounding.second_key`: 2.5 → 3); the first of two keys that
    round to the same second wins; a value that is not four finite numbers is dropped. ``None`` when the
    answer has no ``{…}`` at all; a dict whose every value was dropped gives ``{}``. Uses
    :func:`visd.grounding.parse_boxes_by_second`, the parser of the training reward R3.
    """
    a = answer_text(text)
    lo, hi = a.find("{"), a.rfind("}")
    if lo < 0 or hi <= lo:
        return None
    return parse_boxes_by_second(a)


# ------------------------------------------------------------------------------------------ per-item metrics
def temporal_iou(pred, gt) -> float:
    """tIoU = |[s, e] ∩ [s*, e*]| / (max(e, e*) − min(s, s*)).

    0 when ``pred`` is ``None``, not two finite numbers, reversed (s > e) or zero-length, and when the
    ground truth is invalid. Same definition as :func:`visd.rewards.temporal_iou` (reused).
    """
    if pred is None or gt is None:
        return 0.0
    return _rewards_temporal_iou(pred, gt)


def _second(k: Any) -> int | None:
    try:
        t = float(k)
    except (TypeError, ValueError, OverflowError):
        return None
    return second_key(t) if math.isfinite(t) else None


def viou(pred: Mapping | None, gt: Mapping) -> float:
    """vIoU = (1/|T*|) Σ_{t ∈ T*} IoU(b_t, b*_t): mean over the ground-truth seconds of the box IoU
    with the predicted box at that second, 0 where the prediction has none.

    Keys of both dicts may be ints or numeric strings (rounded with :func:`visd.grounding.second_key`).
    Empty (or ``None``) ground truth gives 0; a ``None`` prediction gives 0.
    """
    if not gt:
        return 0.0
    boxes: dict[int, Any] = {}
    for k, b in (pred or {}).items():
        s = _second(k)
        if s is not None:
            boxes.setdefault(s, b)
    total = 0.0
    for k, g in gt.items():
        s = _second(k)
        p = boxes.get(s) if s is not None else None
        total += box_iou(p, g) if p is not None else 0.0
    return total / len(gt)


# ------------------------------------------------------------------------------------------ judge
JUDGE_SYSTEM = (
    "You are a strict, impartial grader of answers to questions about videos. You do not see the video. "
    "You compare a model's prediction with the reference answer and rate how well the prediction agrees "
    "with the reference in meaning. Wording, length and style do not matter; facts do."
)

JUDGE_TEMPLATE = """Question: {question}

Reference answer: {answer}

Model prediction: {prediction}

Rate the model prediction against the reference answer with one integer from 0 to 3:
3 = correct: it states the same facts as the reference (different wording is fine).
2 = mostly correct: the key facts match the reference; only minor details are missing or slightly off.
1 = partly correct: it overlaps with the reference, but a key fact is missing or wrong.
0 = wrong: it contradicts the reference, answers something else, or gives no answer.
Extra details that the reference does not mention do not lower the score unless they contradict it.

Reply with a single JSON object and nothing else, exactly of the form {{"score": n}} with n one of 0, 1, 2, 3."""


def judge_messages(question: str, answer: str, prediction: str) -> list[dict]:
    """OpenAI chat messages asking the judge for ``{"score": n}``, n ∈ {0, 1, 2, 3} (correct iff n ≥ 2).

    ``prediction`` may be a raw completion: the judge sees only :func:`answer_text` of it, cut to
    :data:`MAX_JUDGE_PREDICTION_CHARS` characters. The prompt is :data:`JUDGE_SYSTEM` plus
    :data:`JUDGE_TEMPLATE` (hash them to key a judge cache).
    """
    pred = answer_text(prediction)[:MAX_JUDGE_PREDICTION_CHARS]
    user = JUDGE_TEMPLATE.format(
        question=_text(question).strip(), answer=_text(answer).strip(), prediction=pred if pred else "(no answer)"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_SCORE_RE = re.compile(r"""["']?score["']?\s*[:=]\s*["']?\s*([-+]?\d+(?:\.\d+)?)\s*["']?\s*(?=[,}\s]|$)""",
                       re.IGNORECASE)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)


def _score_value(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not re.fullmatch(r"[-+]?\d+(?:\.0+)?", v):
            return None
        v = float(v)
    if isinstance(v, Integral):
        n = int(v)
    elif isinstance(v, Real) and math.isfinite(float(v)) and float(v).is_integer():
        n = int(float(v))
    else:
        return None
    return n if n in JUDGE_SCORES else None


def parse_judge_score(text: str) -> int | None:
    """The judge's score 0–3 from its reply, else ``None`` (which counts as wrong).

    Accepted: the JSON object ``{"score": n}`` (strict, inside a code fence, or with text around it;
    also single quotes), ``n`` an integer 0–3 (``2``, ``2.0``, ``"2"``), or a reply that is just the
    integer. Out-of-range, fractional, boolean or missing scores, and replies holding several different
    scores, give ``None``.
    """
    s = _text(text).strip()[:10_000]
    if not s:
        return None
    m = _FENCE_RE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        obj = json.loads(s)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, str) and k.strip().lower() == "score"]
        return _score_value(obj[keys[0]]) if len(keys) == 1 else None
    if obj is not None and not isinstance(obj, (list, dict)):
        return _score_value(obj)  # a bare number (or quoted number)
    found = set(_SCORE_RE.findall(s))
    if len(found) != 1:
        return None
    return _score_value(found.pop())


def _normalise(text: str) -> str:
    return " ".join(tokens(text))


def fallback_correct(prediction: str, answer: str) -> bool:
    """Offline Acc: normalised exact match or ROUGE-L F ≥ 0.5 (:func:`visd.rewards.rouge_l_f`).

    ``prediction`` may be a raw completion (:func:`answer_text` is applied). Normalisation = lower-case
    ``[a-z0-9]+`` word tokens joined by single spaces (punctuation and case ignored). An empty
    reference or prediction is never correct.
    """
    pred, ref = _normalise(answer_text(prediction)), _normalise(_text(answer))
    if not pred or not ref:
        return False
    return pred == ref or rouge_l_f(pred, ref) >= ROUGE_L_MIN


# ------------------------------------------------------------------------------------------ items
def _item_id(item: Mapping) -> str:
    return str(item.get("item_id", "?"))


def _judge_state(item: Mapping) -> tuple[str, int | None]:
    """("scored", n) | ("unparsable", None) | ("none", None) for the item's ``what`` judge fields."""
    what = item.get("what") or {}
    v = what.get("judge_score")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ("unparsable", None) if what.get("judged") else ("none", None)
    n = _score_value(v) if not isinstance(v, str) else None
    if n is None:
        raise ValueError(
            f"item {_item_id(item)!r}: field what.judge_score={v!r} is not an integer 0–3; store "
            "parse_judge_score(reply) there (None with what.judged=True for an unparsable reply)"
        )
    return "scored", n


def duration_bucket(duration_s: float) -> str:
    """``short`` (< 60 s), ``medium`` (60–180 s) or ``long`` (≥ 180 s)."""
    d = float(duration_s)
    for name, lo, hi in DURATION_BUCKETS:
        if lo <= d < hi:
            return name
    raise ValueError(f"duration {duration_s!r} is not a finite number of seconds ≥ 0")


def _chain_text(item: Mapping, chain: int, question: str) -> str:
    c = item.get(f"chain{chain}") or {}
    return _text(c.get(question) if isinstance(c, Mapping) else None)


def per_item(item: Mapping, acc_metric: str | None = None) -> dict:
    """Scores of one item (a flat dict of scalars, the per-item row of the evaluate stage).

    Keys: ``item_id``, ``duration_s``, ``bucket``, ``judge_score`` (int or None), ``acc_metric`` (which
    rule decided ``correct``), ``correct`` (bool), ``what_parsed`` (the prediction had non-empty answer
    text), and per chain c ∈ {1, 2}: ``tIoU_c``, ``vIoU_c`` (fractions in [0, 1]), ``span_parsed_c``,
    ``boxes_parsed_c``. ``acc_metric`` ``"Acc"`` uses the judge (score ≥ 2; an unparsable reply is
    wrong), ``"Acc_offline"`` uses :func:`fallback_correct`; ``None`` picks ``"Acc"`` when the item was
    judged, else ``"Acc_offline"``. A missing chain or prediction scores 0 with ``*_parsed`` False.
    """
    iid = _item_id(item)
    try:
        dur = float(item.get("duration_s"))
        bucket = duration_bucket(dur)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"item {iid!r}: field duration_s={item.get('duration_s')!r} is not a finite duration in seconds ≥ 0; "
            "fix the benchmark import"
        ) from e
    what = item.get("what") or {}
    state, score = _judge_state(item)
    metric = acc_metric or ("Acc_offline" if state == "none" else "Acc")
    if metric == "Acc":
        if state == "none":
            raise ValueError(f"item {iid!r}: what.judge_score is missing but Acc (judge) was asked for")
        correct = score is not None and score >= JUDGE_CORRECT_MIN
    elif metric == "Acc_offline":
        correct = fallback_correct(_text(what.get("prediction")), _text(what.get("answer")))
    else:
        raise ValueError(f"acc_metric={acc_metric!r} is not 'Acc' or 'Acc_offline'")
    row: dict[str, Any] = {
        "item_id": iid,
        "duration_s": dur,
        "bucket": bucket,
        "judge_score": score,
        "acc_metric": metric,
        "correct": bool(correct),
        "what_parsed": bool(answer_text(what.get("prediction"))),
    }
    gt_window = item.get("gt_window")
    gt_boxes = item.get("gt_boxes") or {}
    for c in CHAINS:
        span = parse_span(_chain_text(item, c, "when"))
        boxes = parse_boxes(_chain_text(item, c, "where"))
        row[f"tIoU_{c}"] = temporal_iou(span, gt_window)
        row[f"vIoU_{c}"] = viou(boxes, gt_boxes)
        row[f"span_parsed_{c}"] = span is not None
        row[f"boxes_parsed_{c}"] = boxes is not None
    return row


# ------------------------------------------------------------------------------------------ dataset
def _at_least(x: float, thr: float) -> bool:
    return x >= thr - THRESHOLD_TOL


def _lgm(*terms: float) -> float:
    """−(1/k) Σ ln(1 − x) with each x clipped to 1 − LGM_CLIP (computed as 1 − x floored at LGM_CLIP)."""
    return -sum(math.log(max(1.0 - t, LGM_CLIP)) for t in terms) / len(terms)


def _metrics(rows: list[dict], acc_metric: str) -> dict:
    n = len(rows)
    if n == 0:
        return {"n_items": 0}
    acc = sum(r["correct"] for r in rows) / n
    out: dict[str, Any] = {"n_items": n, "acc_metric": acc_metric, acc_metric: 100.0 * acc}
    means: dict[str, float] = {}
    for c in CHAINS:
        t = [r[f"tIoU_{c}"] for r in rows]
        v = [r[f"vIoU_{c}"] for r in rows]
        means[f"t{c}"], means[f"v{c}"] = sum(t) / n, sum(v) / n
        out[f"tIoU_{c}"] = 100.0 * means[f"t{c}"]
        for thr in R_THRESHOLDS:
            out[f"R@{thr}_{c}"] = 100.0 * sum(_at_least(x, thr) for x in t) / n
        out[f"vIoU_{c}"] = 100.0 * means[f"v{c}"]
        for thr in AP_THRESHOLDS:
            out[f"AP@{thr}_{c}"] = 100.0 * sum(_at_least(x, thr) for x in v) / n
    am = {c: (acc + means[f"t{c}"] + means[f"v{c}"]) / 3 for c in CHAINS}
    lgm = {c: _lgm(acc, means[f"t{c}"], means[f"v{c}"]) for c in CHAINS}
    for c in CHAINS:
        out[f"AM_{c}"] = 100.0 * am[c]
    for c in CHAINS:
        out[f"LGM_{c}"] = 100.0 * lgm[c]
    out["mAM"] = 100.0 * sum(am.values()) / len(CHAINS)
    out["mLGM"] = 100.0 * sum(lgm.values()) / len(CHAINS)
    return out


def _acc_metric(items: list[Mapping]) -> str:
    states = [_judge_state(it)[0] for it in items]
    judged = [s != "none" for s in states]
    if all(judged):
        return "Acc"
    if not any(judged):
        return "Acc_offline"
    missing = next(it for it, j in zip(items, judged, strict=True) if not j)
    have = next(it for it, j in zip(items, judged, strict=True) if j)
    raise ValueError(
        f"item {_item_id(missing)!r}: field what.judge_score is missing while item {_item_id(have)!r} "
        f"has one ({sum(judged)} of {len(items)} items judged); judge every item (what.judged=True for an "
        "unparsable reply) or none, so Acc and Acc_offline are never mixed"
    )


def summarize(items: Iterable[Mapping]) -> dict:
    """V-STaR metrics of a list of items (METHODS §6), all as percentages.

    Item: ``{"item_id", "duration_s", "what": {"prediction", "answer", "judge_score"[, "judged"]},
    "gt_window": [s, e], "gt_boxes": {sec: [x1, y1, x2, y2]}, "chain1": {"when", "where"},
    "chain2": {"where", "when"}}`` with raw completion texts as predictions.

    ``judge_score`` is an int 0–3 or ``None``; an item whose judge reply was unparsable carries
    ``judge_score=None`` and ``judged=True`` and counts as wrong. When every item was judged the accuracy
    key is ``"Acc"`` (score ≥ 2); when none was, ``"Acc_offline"`` (:func:`fallback_correct`); a mix
    raises ``ValueError`` naming an unjudged item.

    Returns ``{"n_items", "acc_metric", <Acc key>, "tIoU_1", "R@0.3_1", "R@0.5_1", "R@0.7_1", "vIoU_1",
    "AP@0.1_1" … "AP@0.9_1", the same with ``_2``, "AM_1", "AM_2", "LGM_1", "LGM_2", "mAM", "mLGM",
    "by_duration": {"short" | "medium" | "long": the same flat metrics on that subset, or
    {"n_items": 0}}}``. An empty list gives ``{"n_items": 0, "acc_metric": None, "by_duration": …}``.
    Duplicate ``item_id`` values raise ``ValueError``.
    """
    items = list(items)
    seen: set[str] = set()
    for it in items:
        iid = _item_id(it)
        if iid in seen:
            raise ValueError(f"item {iid!r} appears twice; item_id must be unique within a benchmark")
        seen.add(iid)
    empty_buckets = {name: {"n_items": 0} for name, _, _ in DURATION_BUCKETS}
    if not items:
        return {"n_items": 0, "acc_metric": None, "by_duration": empty_buckets}
    metric = _acc_metric(items)
    rows = [per_item(it, metric) for it in items]
    out = _metrics(rows, metric)
    out["by_duration"] = {name: _metrics([r for r in rows if r["bucket"] == name], metric)
                          for name, _, _ in DURATION_BUCKETS}
    return out
