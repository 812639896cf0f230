"""visd.rewards: METHODS §5 R1–R7, tIoU (§6), box IoU and ROUGE against hand-computed values and brute force."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from visd.data import synth
from visd.rewards import (
    REWARD_TERMS,
    applicable_terms,
    box_iou,
    compute_rewards,
    names_match,
    r_accuracy,
    r_box_iou,
    r_format,
    r_temporal_iou,
    r_think_box_iou,
    r_think_in_window,
    r_think_near_keyframes,
    rouge_l_f,
    rouge_mean_f,
    rouge_n_f,
    sigma_at,
    temporal_iou,
    tokens,
)
from visd.tables import TASK_TYPES


def sample(task_type, answer="", window=None, key_frames=(), question="", options=()):
    return {"sample_id": f"s-{task_type}", "task_type": task_type, "question": question, "options": list(options),
            "answer": answer, "answer_window": window, "key_frames": list(key_frames)}


def kf(t, *objs):
    return {"time": t, "objects": [{"name": n, "box": b} for n, b in objs]}


def out(think="x", answer=""):
    return f"<think>{think}</think><answer>{answer}</answer>"


# ------------------------------------------------------------------------------------------ tIoU, box IoU
@pytest.mark.parametrize("pred,gt,want", [
    ([1, 3], [2, 4], 1 / 3),  # ∩ = [2,3] = 1; hull = 4 − 1 = 3
    ([2, 4], [1, 3], 1 / 3),
    ([1, 2], [0, 4], 1 / 4),  # ∩ = 1; hull = 4
    ([2.5, 3.5], [2.5, 3.5], 1.0),
    ([0, 1], [2, 3], 0.0),  # disjoint
    ([0, 1], [1, 2], 0.0),  # touching
    ([2, 2], [1, 3], 0.0),  # zero-length prediction
    ([2, 2], [2, 2], 0.0),  # empty hull
    ([3, 1], [1, 3], 0.0),  # reversed prediction
    ([1, 3], [3, 1], 0.0),  # reversed ground truth
    ([float("nan"), 3], [1, 3], 0.0),
    ([1, float("inf")], [1, 3], 0.0),
    ([1, 2, 3], [1, 3], 0.0),
    (None, [1, 3], 0.0),
    ("1,3", [1, 3], 0.0),
    (np.array([1.0, 3.0]), (2, 4), 1 / 3),
])
def test_temporal_iou_hand(pred, gt, want):
    assert temporal_iou(pred, gt) == pytest.approx(want, abs=1e-12)


def test_temporal_iou_brute_force():
    """Unit cells on an integer grid: tIoU = #cells in both / #cells in the hull [min s, max e)."""
    rng = random.Random(1)
    cells = np.arange(0, 60)
    for _ in range(500):
        s1, e1 = sorted(rng.sample(range(61), 2))
        s2, e2 = sorted(rng.sample(range(61), 2))
        a = (cells >= s1) & (cells < e1)
        b = (cells >= s2) & (cells < e2)
        hull = (cells >= min(s1, s2)) & (cells < max(e1, e2))
        want = np.sum(a & b, dtype=np.float64) / np.sum(hull)
        assert temporal_iou([s1 / 7, e1 / 7], [s2 / 7, e2 / 7]) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("pred,gt,want", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # ∩ = 1; ∪ = 4 + 4 − 1
    ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),
    ([52, 30, 74, 52], [52, 30, 74, 52], 1.0),
    ([63, 30, 85, 52], [52, 30, 74, 52], 1 / 3),  # ∩ = 11·22 = 242; ∪ = 484 + 484 − 242 = 726
    ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),
    ([1, 1, 1, 3], [0, 0, 4, 4], 0.0),  # degenerate prediction
    ([0, 0, 4, 4], [2, 2, 2, 3], 0.0),  # degenerate ground truth
    ([2, 2, 0, 0], [0, 0, 2, 2], 0.0),  # reversed corners
    ([0, 0, float("nan"), 2], [0, 0, 2, 2], 0.0),
    ([0, 0, 2], [0, 0, 2, 2], 0.0),
    ([0, 0, 2, 2, 2], [0, 0, 2, 2], 0.0),
    (None, [0, 0, 2, 2], 0.0),
    ("[0,0,2,2]", [0, 0, 2, 2], 0.0),
    (np.array([0, 0, 2, 2]), (1, 1, 3, 3), 1 / 7),
])
def test_box_iou_hand(pred, gt, want):
    assert box_iou(pred, gt) == pytest.approx(want, abs=1e-12)


def test_box_iou_brute_force():
    """Pixel masks on an integer grid, float64."""
    rng = random.Random(2)
    for _ in range(300):
        boxes = []
        for _ in range(2):
            x1, x2 = sorted(rng.sample(range(41), 2))
            y1, y2 = sorted(rng.sample(range(41), 2))
            boxes.append([x1, y1, x2, y2])
        masks = []
        for x1, y1, x2, y2 in boxes:
            m = np.zeros((40, 40), dtype=bool)
            m[y1:y2, x1:x2] = True
            masks.append(m)
        want = np.sum(masks[0] & masks[1], dtype=np.float64) / np.sum(masks[0] | masks[1])
        assert box_iou(*boxes) == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------------------------ ROUGE
def test_tokens():
    assert tokens("The Red-circle, moves 2x!") == ["the", "red", "circle", "moves", "2x"]


def test_rouge_hand():
    # pred: the red circle moves down (5)   ref: a red circle moves up (5)
    # R1: overlap {red, circle, moves} = 3 -> P = R = 3/5 -> F = 0.6
    # R2: pred bigrams the-red red-circle circle-moves moves-down; ref a-red red-circle circle-moves moves-up
    #     overlap 2 of 4 each -> F = 0.5
    # RL: LCS "red circle moves" = 3 -> F = 0.6;  mean = (0.6 + 0.5 + 0.6) / 3 = 17/30
    p, r = "the red circle moves down", "a red circle moves up"
    assert rouge_n_f(p, r, 1) == pytest.approx(0.6)
    assert rouge_n_f(p, r, 2) == pytest.approx(0.5)
    assert rouge_l_f(p, r) == pytest.approx(0.6)
    assert rouge_mean_f(p, r) == pytest.approx(17 / 30)
    # pred: red circle (2)   ref: the red circle (3)
    # R1: overlap 2, P = 1, R = 2/3 -> F = 2·(2/3)/(5/3) = 0.8;  R2: 1 of 1 vs 1 of 2 -> P = 1, R = 1/2 -> F = 2/3
    # RL: LCS 2 -> 0.8;  mean = (0.8 + 2/3 + 0.8)/3 = 34/45
    assert rouge_mean_f("red circle", "the red circle") == pytest.approx(34 / 45)
    # clipped counts: pred red red red, ref red circle: overlap min(3,1) = 1, P = 1/3, R = 1/2 -> F = 0.4
    assert rouge_n_f("red red red", "red circle", 1) == pytest.approx(0.4)
    # order: pred circle red, ref red circle: R1 = 1, R2 = 0, LCS = 1 -> RL = 0.5; mean = 1.5/3 = 0.5
    assert rouge_mean_f("circle red", "red circle") == pytest.approx(0.5)
    # one-word reference: ROUGE-2 undefined and left out -> mean(R1, RL)
    assert rouge_mean_f("red", "red") == 1.0
    assert rouge_mean_f("Red.", "red") == 1.0
    # pred red circle vs ref red: R1 P = 1/2, R = 1 -> 2/3; RL 2/3
    assert rouge_mean_f("red circle", "red") == pytest.approx(2 / 3)
    assert rouge_mean_f("", "red") == 0.0 and rouge_mean_f("red", "") == 0.0


def _lcs_brute(a, b):
    for k in range(min(len(a), len(b)), 0, -1):
        subs = set(itertools.combinations(a, k))
        if any(s in subs for s in itertools.combinations(b, k)):
            return k
    return 0


def test_rouge_l_brute_force():
    rng = random.Random(3)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        b = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        k = _lcs_brute(a, b)
        want = 0.0 if k == 0 else 2 * (k / len(a)) * (k / len(b)) / (k / len(a) + k / len(b))
        assert rouge_l_f(" ".join(a), " ".join(b)) == pytest.approx(want)


@pytest.mark.parametrize("a,b,match", [
    ("circle", "red circle", True), ("red circle", "circle", True), ("Red Circle", "red circle", True),
    ("the circle", "the square", False), ("blue square", "red circle", False), ("", "red circle", False),
    (None, "x", False),
])
def test_names_match(a, b, match):
    assert names_match(a, b) is match


# ------------------------------------------------------------------------------------------ R1 accuracy
MCQ = sample("mcq", "D", options=["A. yellow", "B. green", "C. blue", "D. red"])


@pytest.mark.parametrize("answer,want", [
    ("D", 1.0), ("D.", 1.0), ("(D)", 1.0), ("[D]", 1.0), ("D. red", 1.0), ("The answer is D", 1.0),
    ("C", 0.0), ("red", 0.0), ("d", 0.0), ("", 0.0),
])
def test_accuracy_mcq(answer, want):
    assert r_accuracy(out(answer=answer), MCQ) == want


def test_accuracy_mcq_without_answer_tag():
    assert r_accuracy("<think>D</think>D", MCQ) == 0.0


@pytest.mark.parametrize("answer,want", [
    ("3", 1.0), ("3.0", 1.0), ("three", 1.0), ("3 shapes", 1.0), ("4", 0.0), ("3 or 4", 0.0), ("nan", 0.0), ("", 0.0),
])
def test_accuracy_numeric(answer, want):
    assert r_accuracy(out(answer=answer), sample("numeric", "3")) == want


def test_accuracy_open():
    s = sample("open", "a red circle moves up")
    assert r_accuracy(out(answer="the red circle moves down"), s) == pytest.approx(17 / 30)  # see test_rouge_hand
    assert r_accuracy(out(answer="A red circle moves up."), s) == 1.0
    assert r_accuracy(out(answer="green"), s) == 0.0
    assert r_accuracy(out(answer="red"), sample("open", "red")) == 1.0


@pytest.mark.parametrize("task_type", ["temporal", "spatial", "spatiotemporal"])
def test_accuracy_not_scored_for_grounding_tasks(task_type):
    s = sample(task_type, "[1,2,3,4]", window=[1, 2], key_frames=[kf(1.0, ("x", [1, 2, 3, 4]))])
    assert r_accuracy(out(answer="[1,2,3,4]"), s) == 0.0


# ------------------------------------------------------------------------------------------ R2 tIoU
TEMPORAL = sample("temporal", "From <t>2.5</t>s to <t>3.5</t>s", window=[2.5, 3.5],
                  key_frames=[kf(2.5, ("red triangle", [52, 30, 74, 52])),
                              kf(3.5, ("red triangle", [52, 80, 74, 102]))])


@pytest.mark.parametrize("answer,want", [
    ("From <t>2.5</t>s to <t>3.5</t>s", 1.0),
    ("from 2.5s to 3.5s", 1.0),
    ("From <t>3.0</t>s to <t>4.0</t>s", 1 / 3),  # ∩ = [3, 3.5] = 0.5; hull = 4 − 2.5 = 1.5
    ("[0:02, 0:03]", 0.5 / 1.5),  # [2, 3]: ∩ = 0.5; hull = 3.5 − 2 = 1.5
    ("From <t>4</t>s to <t>3</t>s", 0.0),  # reversed
    ("From <t>2.5</t>s", 0.0),
    ("From <t>nan</t>s to <t>3</t>s", 0.0),
])
def test_temporal_iou_reward(answer, want):
    assert r_temporal_iou(out(answer=answer), TEMPORAL) == pytest.approx(want)


def test_temporal_iou_reward_only_on_temporal_samples():
    a = out(answer="From <t>2.5</t>s to <t>3.5</t>s")
    for tt in ("mcq", "open", "numeric", "spatial", "spatiotemporal"):
        assert r_temporal_iou(a, {**TEMPORAL, "task_type": tt}) == 0.0
    assert r_temporal_iou(a, {**TEMPORAL, "answer_window": None}) == 0.0
    assert r_temporal_iou(a, {**TEMPORAL, "answer_window": [3.5, 2.5]}) == 0.0


# ------------------------------------------------------------------------------------------ R3 box IoU
SPATIAL = sample("spatial", "[52,30,74,52]", question="Where is the red triangle at 1.0 s?",
                 key_frames=[kf(0.5, ("red triangle", [0, 0, 22, 22]), ("blue circle", [52, 30, 74, 52])),
                             kf(1.0, ("red triangle", [52, 30, 74, 52]), ("blue circle", [0, 0, 22, 22]))])


@pytest.mark.parametrize("answer,want", [
    ("[52,30,74,52]", 1.0),
    ("[63,30,85,52]", 1 / 3),  # shifted by 11 px: see test_box_iou_hand
    ("<obj>red triangle</obj><box>[52,30,74,52]</box>", 1.0),
    ("[0,0,22,22]", 0.0),  # the blue circle's box at 1.0 s / the triangle's at 0.5 s: not the asked object+time
    ("[52,30,74]", 0.0),
    ("[52,30,74,52,1]", 0.0),
    ("", 0.0),
])
def test_box_iou_spatial(answer, want):
    assert r_box_iou(out(answer=answer), SPATIAL) == pytest.approx(want)


def test_box_iou_spatial_single_key_frame_without_time_in_question():
    s = sample("spatial", "[1,1,3,3]", question="Where is it?", key_frames=[kf(2.0, ("it", [1, 1, 3, 3]))])
    assert r_box_iou(out(answer="[0,0,2,2]"), s) == pytest.approx(1 / 7)


SPATIOTEMPORAL = sample("spatiotemporal", '{"1":[8,77,30,99],"2":[19,77,41,99]}', window=[1.0, 2.0],
                        question="Where is the green circle while it moves right?",
                        key_frames=[kf(1.0, ("green circle", [8, 77, 30, 99])),
                                    kf(2.0, ("green circle", [19, 77, 41, 99]))])


@pytest.mark.parametrize("answer,want", [
    ('{"1":[8,77,30,99],"2":[19,77,41,99]}', 1.0),
    ('{"1":[8,77,30,99]}', 0.5),  # second 2 missing -> (1 + 0) / 2
    ('{"1":[8,77,30,99],"2":[30,77,52,99]}', (1 + 1 / 3) / 2),  # ∩ = 11·22 of ∪ = 726 at second 2
    ('{"1":[8,77,30,99],"2":[19,77,41]}', 0.5),  # wrong-arity entry dropped
    ('{"5":[8,77,30,99]}', 0.0),
    ("[8,77,30,99]", 0.0),  # a plain box is not a per-second answer
])
def test_box_iou_spatiotemporal(answer, want):
    assert r_box_iou(out(answer=answer), SPATIOTEMPORAL) == pytest.approx(want)


def test_box_iou_spatiotemporal_fractional_key_frame_rounds_half_up():
    s = sample("spatiotemporal", "", key_frames=[kf(2.5, ("x", [0, 0, 2, 2]))])
    assert r_box_iou(out(answer='{"3":[0,0,2,2]}'), s) == 1.0
    assert r_box_iou(out(answer='{"2":[0,0,2,2]}'), s) == 0.0


@pytest.mark.parametrize("task_type", ["mcq", "open", "numeric", "temporal"])
def test_box_iou_not_scored_for_other_tasks(task_type):
    assert r_box_iou(out(answer="[52,30,74,52]"), {**SPATIAL, "task_type": task_type}) == 0.0


# ------------------------------------------------------------------------------------------ R4, R5
def test_think_in_window():
    # times 2.5, 3.0, 4.0, 1.0 against [2.5, 3.5] (inclusive): 2 of 4 inside
    c = out(think="<t>2.5</t>s <t>3.0</t>s <t>4.0</t>s <t>1.0</t>s", answer="x")
    assert r_think_in_window(c, TEMPORAL) == 0.5
    assert r_think_in_window(c, {**TEMPORAL, "answer_window": None}) == 0.0
    assert r_think_in_window(out(think="no times"), TEMPORAL) == 0.0
    assert r_think_in_window("<t>2.5</t>", TEMPORAL) == 0.0  # times outside a think block do not count


@pytest.mark.parametrize("p,sigma", [
    (0.0, 4.0), (0.5, 2.0), (0.74, 4 * 0.26), (0.75, 1.0), (1.0, 1.0), (-1.0, 4.0), (2.0, 1.0), (float("nan"), 4.0),
])
def test_sigma_schedule(p, sigma):
    assert sigma_at(p) == pytest.approx(sigma)


@pytest.mark.parametrize("p,want", [
    # key frames 1.0, 3.0; think times 1.0, 2.0, 5.0 -> d = 0, 1, 2
    (0.0, (1 + math.exp(-1 / 32) + math.exp(-4 / 32)) / 3),  # σ = 4: 0.950576712
    (0.5, (1 + math.exp(-1 / 8) + math.exp(-4 / 8)) / 3),  # σ = 2: 0.829675854
    (0.9, (1 + math.exp(-1 / 2) + math.exp(-4 / 2)) / 3),  # σ = 1: 0.580621981
])
def test_think_near_keyframes(p, want):
    s = sample("open", "x", key_frames=[kf(1.0), kf(3.0)])
    c = out(think="<t>1.0</t>s <t>2.0</t>s <t>5.0</t>s")
    assert r_think_near_keyframes(c, s, progress=p) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx({0.0: 0.950576712, 0.5: 0.829675854, 0.9: 0.580621981}[p], abs=1e-9)
    assert r_think_near_keyframes(out(think="none"), s, p) == 0.0
    assert r_think_near_keyframes(c, sample("open", "x"), p) == 0.0


def test_fixed_scale_scores_r5_at_sigma_4_in_every_phase():
    """total_p0 = the other six terms + R5 at σ = 4 (hand values), whatever the phase's progress."""
    from visd.rewards import fixed_scale

    s = sample("open", "red", key_frames=[kf(1.0), kf(3.0)])
    c = out(think="<t>1.0</t>s <t>2.0</t>s <t>5.0</t>s", answer="red")
    r5_sigma4 = (1 + math.exp(-1 / 32) + math.exp(-4 / 32)) / 3  # d = 0, 1, 2 at σ = 4
    for p in (0.0, 1 / 3, 2 / 3, 0.9):
        terms = compute_rewards(c, s, progress=p)
        fx = fixed_scale(terms, c, s)
        others = sum(v for k, v in terms.items() if k not in ("think_near_keyframes", "total"))
        assert fx["think_near_keyframes_p0"] == pytest.approx(r5_sigma4, abs=1e-12)
        assert fx["total_p0"] == pytest.approx(others + r5_sigma4, abs=1e-12)
        assert fx["total_p0"] >= terms["total"] - 1e-12  # a wider σ never lowers R5
        if p > 0:
            assert terms["total"] < fx["total_p0"] - 1e-3  # the as-trained total falls with progress
    assert fixed_scale(compute_rewards("garbage", s, 0.5), "garbage", s) == {"think_near_keyframes_p0": 0.0, "total_p0": 0.0}


# ------------------------------------------------------------------------------------------ R6
THINK_BOX = sample("open", "x", key_frames=[
    kf(2.5, ("red triangle", [52, 30, 74, 52]), ("blue circle", [0, 0, 22, 22])),
    kf(3.5, ("red triangle", [52, 80, 74, 102])),
])


def test_think_box_iou_hand():
    think = (
        "<obj>triangle</obj><box>[52,30,74,52]</box>at<t>2.6</t>s "  # kf 2.5, 'triangle' ~ 'red triangle': 1
        "<obj>red triangle</obj><box>[63,80,85,102]</box>at<t>3.4</t>s "  # kf 3.5: 1/3
        "<obj>green square</obj><box>[0,0,22,22]</box>at<t>2.5</t>s "  # no name match: 0
        "<obj>red triangle</obj><box>[52,30,74,52]</box>at<t>5.0</t>s "  # no key frame within 1 s: 0
        "<obj>blue circle</obj><box>[0,0,22,22]</box>at<t>1.5</t>s "  # |1.5 − 2.5| = 1 (inclusive): 1
        "lone <t>2.5</t>s and <box>[52,30,74,52]</box> do not count"
    )
    # (1 + 1/3 + 0 + 0 + 1) / 5 = 7/15
    assert r_think_box_iou(out(think=think), THINK_BOX) == pytest.approx(7 / 15)


def test_think_box_iou_edge_cases():
    bad_box = out(think="<obj>red triangle</obj><box>[52,30,74]</box>at<t>2.5</t>s "
                        "<obj>red triangle</obj><box>[52,30,74,52]</box>at<t>2.5</t>s")
    assert r_think_box_iou(bad_box, THINK_BOX) == 0.5  # malformed box counts as a claim with IoU 0
    assert r_think_box_iou(out(think="<box>[52,30,74,52]</box>at<t>2.5</t>s"), THINK_BOX) == 0.0  # no name
    assert r_think_box_iou(out(think="nothing"), THINK_BOX) == 0.0
    assert r_think_box_iou(out(think="<obj>red triangle</obj><box>[52,30,74,52]</box>at<t>2.5</t>s"),
                           sample("open", "x")) == 0.0


# ------------------------------------------------------------------------------------------ R7
@pytest.mark.parametrize("text,smp,want", [
    (out(think="<obj>red triangle</obj><box>[52,30,74,52]</box>at<t>2.5</t>s"), THINK_BOX, 1.0),
    (out(think="no evidence"), THINK_BOX, 0.5),
    (out(think="<obj>red triangle</obj> at <t>2.5</t>s"), THINK_BOX, 0.5),  # no box: not grounded
    (out(think="<obj>red</obj><box>[1,2,3]</box>at<t>2.5</t>s"), THINK_BOX, 0.5),  # invalid box
    (out(think="from <t>2.5</t>s to <t>3.5</t>s"), TEMPORAL, 1.0),  # temporal: two timestamps suffice
    (out(think="at <t>2.5</t>s"), TEMPORAL, 0.5),
    (out(think="plain"), MCQ, 1.0),  # nothing to ground against
    (out(think="At <t>1.5</t>s I see no shape"), sample("numeric", "0", key_frames=[kf(1.5)]), 1.0),
    (out(think="I see no shape"), sample("numeric", "0", key_frames=[kf(1.5)]), 0.5),
    ("<think>x</think>", MCQ, 0.0),  # no answer
    ("<answer>D</answer>", MCQ, 0.0),  # no think
    ("<think>x</think><answer>D", MCQ, 0.0),  # unclosed
    ("<answer>D</answer><think>x</think>", MCQ, 0.0),  # order
    (out(think="<obj>a</obj><box>[1,2,3,4]</box>at<t>1</t>") + "</t>", THINK_BOX, 0.0),  # stray tag
    ("", MCQ, 0.0),
])
def test_format(text, smp, want):
    assert r_format(text, smp) == want


# ------------------------------------------------------------------------------------------ compute_rewards
def test_compute_rewards_total_is_the_sum():
    r = compute_rewards(out(think="<obj>red triangle</obj><box>[52,30,74,52]</box>at<t>2.5</t>s <t>4.0</t>s",
                            answer="From <t>3.0</t>s to <t>4.0</t>s"), TEMPORAL, progress=0.5)
    assert set(r) == set(REWARD_TERMS) | {"total"}
    # accuracy 0 (temporal); tIoU 1/3; box 0 (temporal); think times 2.5, 4.0 -> 1 of 2 inside [2.5, 3.5]
    assert r["accuracy"] == 0.0 and r["box_iou"] == 0.0
    assert r["temporal_iou"] == pytest.approx(1 / 3)
    assert r["think_in_window"] == 0.5
    assert r["think_near_keyframes"] == pytest.approx((1 + math.exp(-0.25 / 8)) / 2)  # d = 0, 0.5; σ = 2
    assert r["think_box_iou"] == 1.0 and r["format"] == 1.0
    assert r["total"] == pytest.approx(sum(r[t] for t in REWARD_TERMS))


def test_compute_rewards_accepts_parsed_and_rejects_unknown_task_type():
    from visd.grounding import parse

    text = out(answer="D")
    assert compute_rewards(parse(text), MCQ) == compute_rewards(text, MCQ)
    with pytest.raises(ValueError, match="task_type"):
        compute_rewards(text, {**MCQ, "task_type": "video_qa"})


MALFORMED = [
    None, "", "garbage", b"\xff\xfe\x00", "<think>", "<think>no close <answer>", "</answer></think>",
    "<think>x</think><answer>", "<think>x</think><answer></answer><answer>", "<answer>", "\x00" * 1000,
    "<think>" + "<" * 100_000 + "</think>", bytes(range(256)) * 4000,
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_malformed_completions_score_zero(text, task_type):
    s = {"temporal": TEMPORAL, "spatial": SPATIAL, "spatiotemporal": SPATIOTEMPORAL, "mcq": MCQ,
         "open": sample("open", "red circle", key_frames=THINK_BOX["key_frames"]),
         "numeric": sample("numeric", "3")}[task_type]
    r = compute_rewards(text, s, progress=0.3)
    assert r == {**{t: 0.0 for t in REWARD_TERMS}, "total": 0.0}


def test_numpy_sample_fields():
    """Rows read through pandas carry numpy arrays; they are handled like lists."""
    objects = np.array([{"name": "g", "box": np.array([8, 77, 30, 99.0])}])
    s = {**SPATIOTEMPORAL, "answer_window": np.array([1.0, 2.0]),
         "key_frames": np.array([{"time": 1.0, "objects": objects}])}
    r = compute_rewards(out(think="<obj>g</obj><box>[8,77,30,99]</box>at<t>1</t>s", answer='{"1":[8,77,30,99]}'), s)
    assert r["box_iou"] == 1.0 and r["think_in_window"] == 1.0 and r["think_box_iou"] == 1.0


@pytest.mark.parametrize("task_type,terms", [
    ("mcq", {"accuracy", "format"}),
    ("temporal", {"temporal_iou", "think_in_window", "think_near_keyframes", "think_box_iou", "format"}),
    ("spatial", {"box_iou", "think_near_keyframes", "think_box_iou", "format"}),
    ("spatiotemporal", {"box_iou", "think_in_window", "think_near_keyframes", "think_box_iou", "format"}),
])
def test_applicable_terms(task_type, terms):
    s = {"mcq": MCQ, "temporal": TEMPORAL, "spatial": SPATIAL, "spatiotemporal": SPATIOTEMPORAL}[task_type]
    assert applicable_terms(s) == terms


# ------------------------------------------------------------------------------------------ synthetic references
@pytest.fixture(scope="module")
def synth_rows(tmp_path_factory):
    rows = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"synth{seed}")
        synth.run({"seed": seed}, d, progress=False)
        rows += [json.loads(line) for line in (d / "annotations.jsonl").read_text().splitlines()]
    return rows


def test_synthetic_references_score_full_marks(synth_rows):
    assert {r["task_type"] for r in synth_rows} == set(TASK_TYPES)
    for row in synth_rows:
        r = compute_rewards(row["reference"], row, progress=0.0)
        where = f"{row['sample_id']} ({row['task_type']}): {row['reference']}"
        assert r["format"] == 1.0, where
        if row["task_type"] in ("mcq", "open", "numeric"):
            assert r["accuracy"] == 1.0, where
        if row["task_type"] == "temporal":
            assert r["temporal_iou"] == 1.0, where
        if row["task_type"] in ("spatial", "spatiotemporal"):
            assert r["box_iou"] == 1.0, where
        if "think_in_window" in applicable_terms(row):
            assert r["think_in_window"] == 1.0, where
        if "think_box_iou" in applicable_terms(row):
            assert r["think_box_iou"] == 1.0, where
        for t in REWARD_TERMS:
            assert 0.0 <= r[t] <= 1.0
            if t not in applicable_terms(row):
                assert r[t] == 0.0, (t, where)
