"""Multiple-choice accuracy: the predicted option letter against the reference letter.

The letter is read as by the training reward R1 (METHODS §5, :func:`visd.grounding.parse_letter`):
``X``, ``X.``, ``(X)``, ``[X]``, ``X) red``, ``Answer: X``, ``The answer is X``; upper-case letters only.
It is read from the last ``<answer>…</answer>`` block of the completion, or from the whole text when
there is none (:func:`visd.eval.vstar.answer_text`), so untagged baseline outputs are scored too.

accuracy = 100 · #{items with predicted letter = reference letter} / #items; every item is in the
denominator, an unparsable prediction is wrong (and counted in ``unparsable``).
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping
from typing import Any

from visd.eval.vstar import answer_text
from visd.grounding import parse_letter


def extract_letter(text: str, n_options: int | None = None) -> str | None:
    """The option letter of a completion (see the module docstring), else ``None``.

    With ``n_options`` the letter must be one of the first ``n_options`` letters (``A``…), else ``None``.
    """
    letter = parse_letter(answer_text(text))
    if letter is None:
        return None
    unknown = n_options is None or (isinstance(n_options, float) and math.isnan(n_options))  # NaN: parquet null
    if not unknown and letter not in string.ascii_uppercase[: max(0, int(n_options))]:
        return None
    return letter


def _item_id(item: Mapping) -> str:
    return str(item.get("item_id", "?"))


def per_item(item: Mapping) -> dict:
    """``{"item_id", "task", "pred_letter", "answer", "parsed", "correct"}`` for one item.

    Item: ``{"item_id", "task", "prediction", "answer"[, "n_options"]}``. A reference that is not a
    letter raises ``ValueError`` naming the item.
    """
    iid = _item_id(item)
    want = parse_letter(str(item.get("answer") or "").strip())
    if want is None:
        raise ValueError(
            f"item {iid!r}: field answer={item.get('answer')!r} is not an option letter A–Z; fix the benchmark import"
        )
    got = extract_letter(item.get("prediction"), item.get("n_options"))
    return {
        "item_id": iid,
        "task": str(item.get("task", "")),
        "pred_letter": got,
        "answer": want,
        "parsed": got is not None,
        "correct": got is not None and got == want,
    }


def summarize(items: Iterable[Mapping]) -> dict:
    """``{"n_items", "accuracy" (percent), "unparsable" (count), "by_task": {task: {"n_items", "accuracy"}}}``.

    An empty list gives ``{"n_items": 0, "unparsable": 0, "by_task": {}}`` (no accuracy). Duplicate
    ``item_id`` values raise ``ValueError``.
    """
    rows = []
    seen: set[str] = set()
    for it in items:
        row = per_item(it)
        if row["item_id"] in seen:
            raise ValueError(f"item {row['item_id']!r} appears twice; item_id must be unique within a benchmark")
        seen.add(row["item_id"])
        rows.append(row)
    n = len(rows)
    if n == 0:
        return {"n_items": 0, "unparsable": 0, "by_task": {}}
    by_task: dict[str, dict[str, Any]] = {}
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        by_task[task] = {"n_items": len(sub), "accuracy": 100.0 * sum(r["correct"] for r in sub) / len(sub)}
    return {
        "n_items": n,
        "accuracy": 100.0 * sum(r["correct"] for r in rows) / n,
        "unparsable": sum(not r["parsed"] for r in rows),
        "by_task": by_task,
    }
