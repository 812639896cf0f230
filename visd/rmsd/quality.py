"""Quality of a teacher response and the binary format checks of the Stage-2 reward (METHODS §3).

``q_k = 1[valid(T_k)] · Metric(T_k, y*)`` with the metric chosen by the sample's task type::

    task type        metric            closed?   Metric
    mcq              exact_match       yes       1 if the answer letter equals the ground-truth letter
    numeric          epsilon_accuracy  yes       1 if |ŷ − y| ≤ ε·max(|y|, 1)   (ε = 0.05, a METHODS choice)
    temporal         temporal_iou      yes       tIoU of the answer window (visd.rewards.temporal_iou)
    spatial          box_iou           yes       IoU with the asked key-frame box (visd.rewards.r_box_iou)
    spatiotemporal   box_iou           yes       V-STaR vIoU over the key frames (visd.rewards.r_box_iou)
    open             validity          no        1 (q = 1[valid]); matching is uniform, L_D uses q = 1

Validity (*the format parses*, :func:`is_valid`) = R_outer · R_task:

* ``R_outer`` (:func:`r_outer`): ``<think>`` and ``<answer>`` present and every tag balanced;
* ``R_task`` (:func:`r_task`): the answer parses in the task's answer format — a letter (mcq), one number
  (numeric), a window ``[s, e]`` with s ≤ e (temporal), a box (spatial), boxes keyed by second
  (spatio-temporal), non-empty text (open).

**(choice)** Open-ended inputs get q = 1[valid], so τ > 0 still drops malformed open responses while their
matching stays uniform over the kept ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from visd.grounding import Parsed, parse, parse_number
from visd.rewards import r_accuracy, r_box_iou, r_temporal_iou

METRICS = {"mcq": "exact_match", "numeric": "epsilon_accuracy", "temporal": "temporal_iou",
           "spatial": "box_iou", "spatiotemporal": "box_iou", "open": "validity"}
CLOSED = frozenset(t for t, m in METRICS.items() if m != "validity")


def _parsed(completion) -> Parsed:
    return completion if isinstance(completion, Parsed) else parse(completion)


def is_closed(task_type: str) -> bool:
    return task_type in CLOSED


def epsilon_accuracy(pred: float | None, gt: float | None, eps: float = 0.05) -> float:
    """1 if ``|pred − gt| ≤ eps · max(|gt|, 1)``, else 0 (missing or non-finite → 0)."""
    if pred is None or gt is None or not (math.isfinite(pred) and math.isfinite(gt)):
        return 0.0
    return 1.0 if abs(pred - gt) <= eps * max(abs(gt), 1.0) else 0.0


def r_outer(completion) -> float:
    """R_outer: 1 when ``<think>`` and ``<answer>`` are present and all tags are balanced."""
    p = _parsed(completion)
    return 1.0 if (p.has_think and p.has_answer and p.tags_balanced) else 0.0


def r_task(completion, sample: Mapping[str, Any]) -> float:
    """R_task: 1 when the answer parses in the format of the sample's task type."""
    p = _parsed(completion)
    if p.answer is None:
        return 0.0
    tt = sample.get("task_type")
    ok = {
        "mcq": p.answer_letter is not None,
        "numeric": p.answer_number is not None,
        "temporal": p.answer_window is not None and p.answer_window[0] <= p.answer_window[1],
        "spatial": p.answer_box is not None,
        "spatiotemporal": bool(p.answer_boxes_by_second),
        "open": bool(p.answer.strip()),
    }.get(tt, False)
    return 1.0 if ok else 0.0


def is_valid(completion, sample: Mapping[str, Any]) -> bool:
    """The response's format parses: R_outer · R_task = 1."""
    p = _parsed(completion)
    return r_outer(p) * r_task(p, sample) == 1.0


def metric_value(completion, sample: Mapping[str, Any], eps: float = 0.05) -> float:
    """Metric(T, y*) of the sample's task type (module table), before the validity gate."""
    p = _parsed(completion)
    tt = sample.get("task_type")
    if tt not in METRICS:
        raise ValueError(f"sample {sample.get('sample_id')!r}: field task_type={tt!r} is not one of "
                         f"{sorted(METRICS)}; re-run prepare_data on the annotations")
    if tt == "mcq":
        return r_accuracy(p, sample)
    if tt == "numeric":
        return epsilon_accuracy(p.answer_number, parse_number(str(sample.get("answer") or "").replace(",", "")), eps)
    if tt == "temporal":
        return r_temporal_iou(p, sample)
    if tt in ("spatial", "spatiotemporal"):
        return r_box_iou(p, sample)
    return 1.0  # open-ended: validity only


def quality(completion, sample: Mapping[str, Any], eps: float = 0.05) -> dict:
    """``{"q", "metric", "valid", "metric_value"}`` with ``q = 1[valid] · Metric`` in [0, 1]."""
    p = _parsed(completion)
    valid = is_valid(p, sample)
    m = metric_value(p, sample, eps)
    m = min(1.0, max(0.0, m)) if math.isfinite(m) else 0.0
    return {"q": m if valid else 0.0, "metric": METRICS[sample["task_type"]], "valid": valid, "metric_value": m}


def content_reward(completion, sample: Mapping[str, Any], eps: float = 0.05) -> float:
    """R_content: the task metric on closed-ended tasks (validity-gated, = q), 0 on open-ended ones."""
    return quality(completion, sample, eps)["q"] if is_closed(sample.get("task_type")) else 0.0
