"""visd.eval.vstar: METHODS §6 metrics against numbers computed by hand (written as fractions below)."""

from __future__ import annotations

import math

import pytest

from visd.eval.vstar import (
    answer_text,
    fallback_correct,
    judge_messages,
    parse_boxes,
    parse_judge_score,
    parse_span,
    per_item,
    summarize,
    temporal_iou,
    viou,
)

LN_CLIP = math.log(1e-6)  # ln(1 − (1 − 1e-6)): the clipped LGM term


def item(iid, dur, score, gt_window, gt_boxes, c1_when, c1_where, c2_where, c2_when,
         pred="a red ball", answer="a red ball", **what):
    return {
        "item_id": iid,
        "duration_s": dur,
        "what": {"prediction": pred, "answer": answer, "judge_score": score, **what},
        "gt_window": gt_window,
        "gt_boxes": gt_boxes,
        "chain1": {"when": c1_when, "where": c1_where},
        "chain2": {"where": c2_where, "when": c2_when},
    }


# Three items, one per duration bucket. Per-item values worked out by hand:
#   A (30 s, judge 3 → correct)
#     chain1 when [2,6] vs [2,6]                       tIoU 1
#     chain1 where s2: IoU 1; s4: [0,0,10,5] vs [0,0,10,10] = 50/100   vIoU (1 + 1/2)/2 = 3/4
#     chain2 where s2: 1; s4 missing: 0                vIoU 1/2
#     chain2 when [4,8] vs [2,6]: ∩ 2, hull 8−2 = 6      tIoU 1/3
#   B (100 s, judge 1 → wrong)
#     chain1 when 00:05–00:15 = [5,15] vs [10,20]: ∩ 5, hull 15   tIoU 1/3
#     chain1 where [0,0,2,4] vs [0,0,4,4] = 8/16       vIoU 1/2
#     chain2 where no dict                             vIoU 0
#     chain2 when reversed [20,10]                     tIoU 0
#   C (200 s, judge 2 → correct)
#     chain1 when three numbers → unparsable           tIoU 0
#     chain1 where s1: [1,1,3,3] vs [0,0,2,2]: ∩ 1, ∪ 4+4−1 = 7 → 1/7; s2: 1   vIoU (1/7 + 1)/2 = 4/7
#     chain2 where key "1.4" → second 1: IoU 1; s2 missing   vIoU 1/2
#     chain2 when [0,5] vs [0,10]                      tIoU 1/2
A = item("A", 30.0, 3, [2, 6], {2: [0, 0, 10, 10], 4: [0, 0, 10, 10]},
         "<think>at <t>2</t>s</think><answer>From <t>2</t>s to <t>6</t>s</answer>",
         '<answer>{"2":[0,0,10,10],"4":[0,0,10,5]}</answer>',
         '{"2":[0,0,10,10]}',
         "from 4s to 8s")
B = item("B", 100.0, 1, [10, 20], {10: [0, 0, 4, 4]},
         "00:05 to 00:15",
         "{10: [0, 0, 2, 4]}",
         "I don't know",
         "From <t>20</t>s to <t>10</t>s")
C = item("C", 200.0, 2, [0, 10], {1: [0, 0, 2, 2], 2: [0, 0, 2, 2]},
         "1 to 2 to 3",
         "{'1': [1, 1, 3, 3], '2': [0, 0, 2, 2],}",
         '{"1.4": [0, 0, 2, 2]}',
         "0-5")

ACC = 2 / 3
T1, V1 = (1 + 1 / 3 + 0) / 3, (3 / 4 + 1 / 2 + 4 / 7) / 3  # 4/9, 17/28
T2, V2 = (1 / 3 + 0 + 1 / 2) / 3, (1 / 2 + 0 + 1 / 2) / 3  # 5/18, 1/3


def close(got, want):
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------------ answer_text
def test_answer_text_last_block_else_stripped_text():
    assert answer_text("<think>x</think><answer> A </answer> <answer>\n B \n</answer>") == "B"
    assert answer_text("  plain text \n") == "plain text"
    assert answer_text("<answer>unclosed") == "<answer>unclosed"
    assert answer_text(None) == ""


# ------------------------------------------------------------------------------------------ parse_span
@pytest.mark.parametrize("text, want", [
    ("From <t>1.5</t>s to <t>3</t>s", (1.5, 3.0)),
    ("from 1.5s to 3.0 s", (1.5, 3.0)),
    ("1.5-3", (1.5, 3.0)),
    ("1.5 - 3 seconds", (1.5, 3.0)),
    ("[1.5, 3]", (1.5, 3.0)),
    ("00:01 to 01:02.5", (1.0, 62.5)),
    ("1:00:00 - 1:00:30", (3600.0, 3630.0)),
    ("The event happens between 10 and 12.5 seconds.", (10.0, 12.5)),
    ("<think>1 2 3 4</think><answer>From <t>4</t>s to <t>8</t>s</answer>", (4.0, 8.0)),
    ("From <t>6</t>s to <t>2</t>s", (6.0, 2.0)),  # reversed kept as written
])
def test_parse_span_accepted(text, want):
    assert parse_span(text) == want


@pytest.mark.parametrize("text", [
    "", None, "no numbers here", "3", "at <t>3</t>s",  # 0 or 1 number
    "1 to 2 to 3", "From 1.5 to 3.0 in a 10 s clip",  # 3 numbers
    "01:70 to 2",  # mm:ss field ≥ 60
    "<answer></answer>",
])
def test_parse_span_rejected(text):
    assert parse_span(text) is None


# ------------------------------------------------------------------------------------------ parse_boxes
@pytest.mark.parametrize("text, want", [
    ('{"2":[1,2,3,4],"3.0":[5,6,7,8]}', {2: [1, 2, 3, 4], 3: [5, 6, 7, 8]}),
    ("{2: [1, 2, 3, 4]}", {2: [1, 2, 3, 4]}),
    ("{'2': [1, 2, 3, 4], '3': [0.5, 0.5, 1, 1],}", {2: [1, 2, 3, 4], 3: [0.5, 0.5, 1, 1]}),
    ("{\n  '1' : [ 0 , 0 , 1 , 1 ] ,\n}", {1: [0, 0, 1, 1]}),
    ('The boxes are {"2": [1,2,3,4]}.', {2: [1, 2, 3, 4]}),
    ('<think>{"9": [0,0,1,1]}</think><answer>{"2": [1,2,3,4]}</answer>', {2: [1, 2, 3, 4]}),
    ('{"2": [1,2,3], "3": [1,2,3,4,5], "4": [1,2,3,4]}', {4: [1, 2, 3, 4]}),  # wrong arity dropped
    ('{"2.4": [1,2,3,4], "2.5": [5,6,7,8]}', {2: [1, 2, 3, 4], 3: [5, 6, 7, 8]}),  # rounding half up
    ('{"2": [1,2,3]}', {}),  # a dict, every value dropped
    ("{}", {}),
])
def test_parse_boxes_accepted(text, want):
    assert parse_boxes(text) == want


@pytest.mark.parametrize("text", ["", None, "no dict", "[1, 2, 3, 4]", "} backwards {"])
def test_parse_boxes_no_dict(text):
    assert parse_boxes(text) is None


# ------------------------------------------------------------------------------------------ temporal_iou
@pytest.mark.parametrize("pred, gt, want", [
    ((2, 6), (2, 6), 1.0),
    ((4, 8), (2, 6), 2 / 6),
    ((0, 1), (2, 6), 0.0),  # disjoint
    ((3, 4), (2, 6), 1 / 4),  # inside
    ((6, 2), (2, 6), 0.0),  # reversed
    ((3, 3), (2, 6), 0.0),  # zero length
    ((float("nan"), 3), (2, 6), 0.0),
    (None, (2, 6), 0.0),
    ((2, 6), None, 0.0),
])
def test_temporal_iou(pred, gt, want):
    close(temporal_iou(pred, gt), want)


# ------------------------------------------------------------------------------------------ viou
def test_viou_mean_over_gt_seconds_missing_is_zero():
    gt = {1: [0, 0, 2, 2], 2: [0, 0, 2, 2], 3: [0, 0, 2, 2]}
    pred = {1: [0, 0, 2, 2], 2: [0, 0, 1, 2], 7: [0, 0, 2, 2]}  # s2: 2/4; s3 missing; s7 not in GT
    close(viou(pred, gt), (1 + 1 / 2 + 0) / 3)


def test_viou_edge_cases():
    assert viou(None, {1: [0, 0, 1, 1]}) == 0.0
    assert viou({1: [0, 0, 1, 1]}, {}) == 0.0
    assert viou({}, {1: [0, 0, 1, 1]}) == 0.0
    close(viou({"1": [0, 0, 1, 1]}, {"1": [0, 0, 1, 1], "2": [0, 0, 1, 1]}), 1 / 2)  # string keys


# ------------------------------------------------------------------------------------------ judge
def test_judge_messages_shape_and_content():
    msgs = judge_messages("What is rolling?", "a red ball",
                          "<think>secret reasoning</think><answer>a red sphere</answer>")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "What is rolling?" in user and "a red ball" in user and "a red sphere" in user
    assert "secret reasoning" not in user  # only the answer goes to the judge
    assert '{"score": n}' in user and "0 to 3" in user
    assert all(isinstance(m["content"], str) for m in msgs)  # no tuple prompts
    assert "(no answer)" in judge_messages("q", "a", "")[1]["content"]


@pytest.mark.parametrize("text, want", [
    ('{"score": 2}', 2),
    ('{"score": 0}', 0),
    ('```json\n{"score": 3}\n```', 3),
    ('Here you go: {"score": 1} (partly right)', 1),
    ("{'score': 2}", 2),
    ('{"score": "3"}', 3),
    ('{"score": 2.0}', 2),
    ("2", 2),
    ('{"score": 4}', None),  # 0–4 scale leaks are rejected
    ('{"score": -1}', None),
    ('{"score": 2.5}', None),
    ('{"score": true}', None),
    ('{"rating": 2}', None),
    ('{"score": 1} {"score": 3}', None),  # ambiguous
    ("The answer is good.", None),
    ("", None),
    (None, None),
])
def test_parse_judge_score(text, want):
    assert parse_judge_score(text) == want


# ------------------------------------------------------------------------------------------ fallback
@pytest.mark.parametrize("pred, ref, want", [
    ("<answer>A Red Ball.</answer>", "a red ball", True),  # normalised exact
    ("a big red ball", "a red ball", True),  # LCS 3: P 3/4, R 1 → F 6/7
    ("red car", "red ball", True),  # LCS 1: P = R = 1/2 → F exactly 0.5
    ("the ball is red", "a red ball", False),  # LCS 1: P 1/4, R 1/3 → F 2/7
    ("a blue cube", "a red ball", False),  # F 1/3
    ("", "a red ball", False),
    ("anything", "", False),
])
def test_fallback_correct(pred, ref, want):
    assert fallback_correct(pred, ref) is want


# ------------------------------------------------------------------------------------------ per_item
def test_per_item_values():
    r = per_item(A)
    assert r["item_id"] == "A" and r["bucket"] == "short" and r["acc_metric"] == "Acc"
    assert r["correct"] is True and r["judge_score"] == 3
    close(r["tIoU_1"], 1.0)
    close(r["vIoU_1"], 3 / 4)
    close(r["vIoU_2"], 1 / 2)
    close(r["tIoU_2"], 1 / 3)
    assert r["span_parsed_1"] and r["boxes_parsed_1"] and r["span_parsed_2"] and r["boxes_parsed_2"]
    rb, rc = per_item(B), per_item(C)
    assert rb["correct"] is False and rb["boxes_parsed_2"] is False and rb["span_parsed_2"] is True
    assert rb["tIoU_2"] == 0.0  # reversed
    assert rc["span_parsed_1"] is False and rc["tIoU_1"] == 0.0
    close(rc["vIoU_1"], 4 / 7)


def test_per_item_missing_chain_scores_zero():
    it = dict(A)
    del it["chain2"]
    it["chain1"] = {"when": None}
    r = per_item(it)
    assert r["tIoU_1"] == r["vIoU_1"] == r["tIoU_2"] == r["vIoU_2"] == 0.0
    assert not (r["span_parsed_1"] or r["boxes_parsed_1"] or r["span_parsed_2"] or r["boxes_parsed_2"])


# ------------------------------------------------------------------------------------------ summarize
def test_summarize_hand_computed():
    s = summarize([A, B, C])
    assert s["n_items"] == 3 and s["acc_metric"] == "Acc" and "Acc_offline" not in s
    close(s["Acc"], 100 * 2 / 3)
    close(s["tIoU_1"], 100 * 4 / 9)
    close(s["R@0.3_1"], 100 * 2 / 3)
    close(s["R@0.5_1"], 100 * 1 / 3)
    close(s["R@0.7_1"], 100 * 1 / 3)
    close(s["vIoU_1"], 100 * 17 / 28)
    close(s["AP@0.1_1"], 100.0)
    close(s["AP@0.3_1"], 100.0)
    close(s["AP@0.5_1"], 100.0)  # 3/4, 1/2 (= 0.5 counts), 4/7
    close(s["AP@0.7_1"], 100 * 1 / 3)
    close(s["AP@0.9_1"], 0.0)
    close(s["tIoU_2"], 100 * 5 / 18)
    close(s["R@0.3_2"], 100 * 2 / 3)
    close(s["R@0.5_2"], 100 * 1 / 3)
    close(s["R@0.7_2"], 0.0)
    close(s["vIoU_2"], 100 * 1 / 3)
    for thr in ("0.1", "0.3", "0.5"):
        close(s[f"AP@{thr}_2"], 100 * 2 / 3)
    close(s["AP@0.7_2"], 0.0)
    close(s["AP@0.9_2"], 0.0)
    close(s["AM_1"], 100 * 433 / 756)  # (2/3 + 4/9 + 17/28)/3
    close(s["AM_2"], 100 * 23 / 54)  # (2/3 + 5/18 + 1/3)/3
    close(s["mAM"], 100 * 755 / 1512)
    lgm1 = -(math.log(1 / 3) + math.log(5 / 9) + math.log(11 / 28)) / 3
    lgm2 = -(math.log(1 / 3) + math.log(13 / 18) + math.log(2 / 3)) / 3
    close(s["LGM_1"], 100 * lgm1)
    close(s["LGM_2"], 100 * lgm2)
    close(s["mLGM"], 100 * (lgm1 + lgm2) / 2)


def test_hand_fractions_match_per_item_sums():
    close(T1, 4 / 9)
    close(V1, 17 / 28)
    close(T2, 5 / 18)
    close(V2, 1 / 3)
    close(ACC, 2 / 3)


def test_summarize_keys():
    s = summarize([A, B, C])
    per_chain = ["tIoU", "R@0.3", "R@0.5", "R@0.7", "vIoU", "AP@0.1", "AP@0.3", "AP@0.5", "AP@0.7", "AP@0.9"]
    want = {"n_items", "acc_metric", "Acc", "AM_1", "AM_2", "LGM_1", "LGM_2", "mAM", "mLGM", "by_duration"}
    want |= {f"{k}_{c}" for k in per_chain for c in (1, 2)}
    assert set(s) == want
    assert all(isinstance(s[k], float) for k in want - {"n_items", "acc_metric", "by_duration"})


def test_summarize_duration_buckets_and_lgm_clip():
    s = summarize([A, B, C])
    bd = s["by_duration"]
    assert set(bd) == {"short", "medium", "long"}
    assert [bd[k]["n_items"] for k in ("short", "medium", "long")] == [1, 1, 1]
    short = bd["short"]  # item A alone: Acc 1, tIoU_1 1, vIoU_1 3/4 → two LGM terms clipped
    close(short["Acc"], 100.0)
    close(short["tIoU_1"], 100.0)
    close(short["vIoU_1"], 75.0)
    close(short["AM_1"], 100 * (1 + 1 + 3 / 4) / 3)
    close(short["LGM_1"], 100 * -(LN_CLIP + LN_CLIP + math.log(1 / 4)) / 3)
    assert math.isfinite(short["LGM_1"]) and math.isfinite(short["mLGM"])
    close(short["LGM_2"], 100 * -(LN_CLIP + math.log(2 / 3) + math.log(1 / 2)) / 3)
    medium = bd["medium"]  # item B alone: Acc 0
    close(medium["Acc"], 0.0)
    close(medium["tIoU_1"], 100 / 3)
    close(medium["AM_2"], 0.0)
    close(medium["LGM_2"], 0.0)
    close(bd["long"]["vIoU_1"], 100 * 4 / 7)


def test_duration_bucket_boundaries():
    def one(d):
        return summarize([item("x", d, 0, [0, 1], {}, "", "", "", "")])["by_duration"]

    assert one(59.9)["short"]["n_items"] == 1
    assert one(60.0)["medium"]["n_items"] == 1
    assert one(179.9)["medium"]["n_items"] == 1
    assert one(180.0)["long"]["n_items"] == 1
    assert one(0.0)["long"] == {"n_items": 0}


def test_bad_duration_raises_naming_item():
    with pytest.raises(ValueError, match="'x'.*duration_s"):
        summarize([item("x", None, 0, [0, 1], {}, "", "", "", "")])


def test_summarize_empty():
    s = summarize([])
    assert s["n_items"] == 0
    assert s["by_duration"] == {"short": {"n_items": 0}, "medium": {"n_items": 0}, "long": {"n_items": 0}}


def test_unparsable_everything_scores_zero_but_counts():
    bad = item("z", 10.0, None, [0, 10], {1: [0, 0, 1, 1]}, "soon", "there", "?", "", pred="", answer="a ball")
    s = summarize([bad, dict(A, what={"prediction": "a red ball", "answer": "a red ball", "judge_score": None})])
    assert s["n_items"] == 2 and s["acc_metric"] == "Acc_offline"
    close(s["Acc_offline"], 50.0)
    close(s["tIoU_1"], 50.0)  # (0 + 1)/2
    close(s["vIoU_2"], 25.0)  # (0 + 1/2)/2


def test_threshold_counts_float_round_off():
    # [0.1, 0.3] vs [0.1, 0.5]: tIoU 0.2/0.4 = 1/2 on paper, 0.49999999999999994 in floats
    it = item("f", 5.0, 2, [0.1, 0.5], {}, "0.1 to 0.3", "", "", "")
    s = summarize([it])
    close(s["R@0.5_1"], 100.0)
    close(s["R@0.7_1"], 0.0)


# ------------------------------------------------------------------------------------------ Acc modes
def test_offline_acc_when_no_item_is_judged():
    items = [
        item("p", 10.0, None, [0, 1], {}, "", "", "", "", pred="<answer>A red ball</answer>", answer="a red ball"),
        item("q", 10.0, None, [0, 1], {}, "", "", "", "", pred="a blue cube", answer="a red ball"),
    ]
    s = summarize(items)
    assert s["acc_metric"] == "Acc_offline" and "Acc" not in s
    close(s["Acc_offline"], 50.0)
    close(s["AM_1"], 100 * (1 / 2 + 0 + 0) / 3)
    assert s["by_duration"]["short"]["acc_metric"] == "Acc_offline"


def test_mixed_judge_scores_raise_naming_item():
    items = [item("has", 10.0, 2, [0, 1], {}, "", "", "", ""), item("lacks", 10.0, None, [0, 1], {}, "", "", "", "")]
    with pytest.raises(ValueError, match="'lacks'"):
        summarize(items)


def test_unparsable_judge_reply_counts_wrong_under_acc():
    items = [item("u", 10.0, None, [0, 1], {}, "", "", "", "", judged=True),
             item("k", 10.0, 3, [0, 1], {}, "", "", "", "")]
    s = summarize(items)
    assert s["acc_metric"] == "Acc"
    close(s["Acc"], 50.0)  # the exact-match prediction of "u" does not rescue it


@pytest.mark.parametrize("bad", [4, -1, 2.5, "2", True])
def test_out_of_scale_judge_score_raises(bad):
    with pytest.raises(ValueError, match="'b'.*judge_score"):
        summarize([item("b", 10.0, bad, [0, 1], {}, "", "", "", "")])


def test_judge_score_boundary():
    items = [item(str(n), 10.0, n, [0, 1], {}, "", "", "", "") for n in (0, 1, 2, 3)]
    close(summarize(items)["Acc"], 50.0)  # 2 and 3 are correct


def test_duplicate_item_ids_raise():
    with pytest.raises(ValueError, match="'A'"):
        summarize([A, A])
