"""visd.eval.mcq: option-letter extraction (same acceptance as reward R1) and accuracy by hand."""

from __future__ import annotations

import pytest

from visd.eval.mcq import extract_letter, per_item, summarize


@pytest.mark.parametrize("text, want", [
    ("B", "B"),
    ("B.", "B"),
    ("(B)", "B"),
    ("[B]", "B"),
    ("B) a red ball", "B"),
    ("Answer: C", "C"),
    ("The answer is D", "D"),
    ("<think>maybe A</think><answer>(C)</answer>", "C"),
    ("<answer>A</answer><answer>B</answer>", "B"),  # last answer block
    ("  D  ", "D"),
])
def test_extract_letter_accepted(text, want):
    assert extract_letter(text) == want


@pytest.mark.parametrize("text", ["", None, "b", "I think it is blue", "A or B", "<answer></answer>"])
def test_extract_letter_rejected(text):
    assert extract_letter(text) is None


def test_extract_letter_n_options():
    assert extract_letter("D", n_options=4) == "D"
    assert extract_letter("E", n_options=4) is None
    assert extract_letter("E") == "E"
    assert extract_letter("A", n_options=float("nan")) == "A"  # unknown option count


def test_summarize_hand_computed():
    items = [
        {"item_id": "1", "task": "count", "prediction": "<answer>B</answer>", "answer": "B"},
        {"item_id": "2", "task": "count", "prediction": "(C)", "answer": "C"},
        {"item_id": "3", "task": "order", "prediction": "Answer: A", "answer": "D"},
        {"item_id": "4", "task": "order", "prediction": "I think it is blue", "answer": "A"},
        {"item_id": "5", "task": "order", "prediction": "E", "answer": "(A)", "n_options": 4},
    ]
    s = summarize(items)
    assert s == {
        "n_items": 5,
        "accuracy": 100 * 2 / 5,
        "unparsable": 2,  # item 4 (no letter) and item 5 (E beyond 4 options)
        "by_task": {"count": {"n_items": 2, "accuracy": 100.0}, "order": {"n_items": 3, "accuracy": 0.0}},
    }


def test_summarize_empty():
    assert summarize([]) == {"n_items": 0, "unparsable": 0, "by_task": {}}


def test_per_item_row():
    r = per_item({"item_id": "x", "task": "t", "prediction": "<answer>[C]</answer>", "answer": "C"})
    assert r == {"item_id": "x", "task": "t", "pred_letter": "C", "answer": "C", "parsed": True, "correct": True}


def test_bad_reference_raises_naming_item():
    with pytest.raises(ValueError, match="'x'.*answer"):
        summarize([{"item_id": "x", "task": "t", "prediction": "A", "answer": "a red ball"}])


def test_duplicate_ids_raise():
    it = {"item_id": "x", "task": "t", "prediction": "A", "answer": "A"}
    with pytest.raises(ValueError, match="'x'"):
        summarize([it, it])
