"""R-MSD quality q = 1[valid]·Metric per task type (METHODS §3), checked against hand-computed values."""

import pytest

from visd.rmsd.quality import (
    content_reward,
    epsilon_accuracy,
    is_valid,
    quality,
    r_outer,
    r_task,
)


def kf(t, *objs):
    return {"time": t, "objects": [{"name": n, "box": b} for n, b in objs]}


def out(answer, think="I look at the frames."):
    return f"<think>{think}</think><answer>{answer}</answer>"


MCQ = {"sample_id": "m", "task_type": "mcq", "answer": "B", "question": "Which colour?", "options": ["A. red", "B. blue"]}
NUM = {"sample_id": "n", "task_type": "numeric", "answer": "20", "question": "How many?"}
NUM0 = {"sample_id": "n0", "task_type": "numeric", "answer": "0", "question": "How many?"}
TEMP = {"sample_id": "t", "task_type": "temporal", "answer": "From 1 to 3", "answer_window": [1.0, 3.0], "question": "When?"}
SPAT = {"sample_id": "s", "task_type": "spatial", "answer": "[0,0,10,10]", "question": "Where is the red circle?",
        "key_frames": [kf(1.0, ("red circle", [0, 0, 10, 10]))]}
ST = {"sample_id": "st", "task_type": "spatiotemporal", "answer": "", "question": "Track the blue square",
      "key_frames": [kf(1.0, ("blue square", [0, 0, 10, 10])), kf(2.0, ("blue square", [0, 0, 10, 10]))]}
OPEN = {"sample_id": "o", "task_type": "open", "answer": "red, blue", "question": "Which colours appear?"}


@pytest.mark.parametrize("text,sample,q,metric", [
    (out("B"), MCQ, 1.0, "exact_match"),
    (out("(B)"), MCQ, 1.0, "exact_match"),
    (out("A"), MCQ, 0.0, "exact_match"),
    # ε-accuracy: |ŷ − 20| ≤ 0.05·20 = 1
    (out("21"), NUM, 1.0, "epsilon_accuracy"),
    (out("19.0"), NUM, 1.0, "epsilon_accuracy"),
    (out("21.5"), NUM, 0.0, "epsilon_accuracy"),
    # y = 0: tolerance 0.05·max(0, 1) = 0.05
    (out("0.04"), NUM0, 1.0, "epsilon_accuracy"),
    (out("0.06"), NUM0, 0.0, "epsilon_accuracy"),
    # tIoU [2,4] vs [1,3]: inter 1, union 3
    (out("From <t>2.0</t>s to <t>4.0</t>s"), TEMP, 1 / 3, "temporal_iou"),
    (out("From <t>1.0</t>s to <t>3.0</t>s"), TEMP, 1.0, "temporal_iou"),
    # box [5,0,15,10] vs [0,0,10,10]: inter 50, union 150
    (out("[5,0,15,10]"), SPAT, 1 / 3, "box_iou"),
    # vIoU: second 1 exact (1), second 2 box [0,0,5,10] (inter 50 / union 100 = 0.5) → mean 0.75
    (out('{"1":[0,0,10,10],"2":[0,0,5,10]}'), ST, 0.75, "box_iou"),
    # vIoU with second 2 missing → (1 + 0)/2
    (out('{"1":[0,0,10,10]}'), ST, 0.5, "box_iou"),
    (out("green"), OPEN, 1.0, "validity"),
])
def test_quality_by_hand(text, sample, q, metric):
    got = quality(text, sample)
    assert got["metric"] == metric
    assert got["valid"]
    assert got["q"] == pytest.approx(q, abs=1e-12)


@pytest.mark.parametrize("text,sample", [
    ("<answer>B</answer>", MCQ),  # no think: R_outer = 0
    ("<think>x<answer>B</answer>", MCQ),  # unbalanced tags
    (out("blue"), MCQ),  # not a letter: R_task = 0
    (out("many"), NUM),
    (out("soon"), TEMP),
    (out("top left"), SPAT),
    (out(" "), OPEN),
    ("B", MCQ),
])
def test_invalid_responses_have_quality_zero(text, sample):
    got = quality(text, sample)
    assert not got["valid"] and got["q"] == 0.0
    assert not is_valid(text, sample)


def test_invalid_but_correct_metric_is_gated():
    """A right answer without the think block: metric 1, validity 0 → q = 0."""
    got = quality("<answer>B</answer>", MCQ)
    assert got["metric_value"] == 1.0 and got["q"] == 0.0


def test_epsilon_accuracy_boundary_and_missing():
    assert epsilon_accuracy(105.0, 100.0) == 1.0  # |5| ≤ 0.05·100 exactly
    assert epsilon_accuracy(105.01, 100.0) == 0.0
    assert epsilon_accuracy(-1.06, -1.0) == 0.0  # |y| = 1: tolerance 0.05
    assert epsilon_accuracy(-1.04, -1.0) == 1.0
    assert epsilon_accuracy(None, 1.0) == 0.0
    assert epsilon_accuracy(float("nan"), 1.0) == 0.0
    assert epsilon_accuracy(1.2, 1.0, eps=0.25) == 1.0


def test_format_checks_and_content():
    assert r_outer(out("B")) == 1.0 and r_outer("<answer>B</answer>") == 0.0
    assert r_task(out("B"), MCQ) == 1.0 and r_task(out("B"), NUM) == 0.0
    assert r_task(out("From <t>1.0</t>s to <t>3.0</t>s"), TEMP) == 1.0
    # R_content = q on closed tasks, 0 on open-ended ones
    assert content_reward(out("21"), NUM) == 1.0
    assert content_reward(out("From <t>2.0</t>s to <t>4.0</t>s"), TEMP) == pytest.approx(1 / 3)
    assert content_reward(out("red, blue"), OPEN) == 0.0


def test_unknown_task_type_names_the_field():
    with pytest.raises(ValueError, match="task_type"):
        quality(out("x"), {"sample_id": "z", "task_type": "poem"})
