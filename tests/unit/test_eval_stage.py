"""The evaluate stage: benchmark selection, V-STaR chain questions, summaries, and a real run on the tiny model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from visd.eval import stage

WHAT = {"sample_id": "v1-c0-what", "item_id": "v1-c0", "chain_step": "what", "split": "eval", "source": "synth",
        "task_type": "open", "question": "What moves left in the video?", "answer": "red circle",
        "duration_s": 70.0, "answer_window": None, "key_frames": [], "options": []}
WHEN = {**WHAT, "sample_id": "v1-c0-when", "chain_step": "when", "task_type": "temporal",
        "question": "When does the red circle move left?", "answer": "From <t>1.0</t>s to <t>3.0</t>s",
        "answer_window": [1.0, 3.0]}
WHERE = {**WHAT, "sample_id": "v1-c0-where", "chain_step": "where", "task_type": "spatiotemporal",
         "question": "Where is the red circle while it moves left?", "answer": '{"1":[0,0,10,10],"3":[20,0,30,10]}',
         "answer_window": [1.0, 3.0],
         "key_frames": [{"time": 1.0, "objects": [{"name": "red circle", "box": [0, 0, 10, 10]}]},
                        {"time": 3.0, "objects": [{"name": "red circle", "box": [20, 0, 30, 10]}]}]}
MCQ = {"sample_id": "v2-q0", "item_id": "v2-q0", "chain_step": None, "split": "eval", "source": "synth",
       "task_type": "mcq", "question": "Which colour appears first?", "answer": "B", "duration_s": 5.0,
       "options": ["A. red", "B. blue"], "answer_window": None, "key_frames": [], "meta": '{"template": "first_colour"}'}
TRAIN = {**MCQ, "sample_id": "v3-q0", "item_id": "v3-q0", "split": "train"}


def test_select_keeps_split_sources_and_whole_chains():
    rows = [WHERE, MCQ, WHAT, TRAIN, WHEN]
    got = stage.select(rows, {"split": "eval", "sources": None, "limit": None})
    assert [r["sample_id"] for r in got] == ["v1-c0-what", "v1-c0-when", "v1-c0-where", "v2-q0"]
    assert [r["sample_id"] for r in stage.select(rows, {"split": "eval", "sources": None, "limit": 1})] == \
        ["v1-c0-what", "v1-c0-when", "v1-c0-where"]  # a chain counts as one item
    assert stage.select(rows, {"split": "eval", "sources": ["vstar"], "limit": None}) == []
    assert [r["sample_id"] for r in stage.select(rows, {"split": "train", "sources": None, "limit": None})] == ["v3-q0"]


def test_chain_questions_carry_ground_truth_context():
    asked = stage.questions([WHAT, WHEN, WHERE, MCQ])
    variants = [(v, s["sample_id"]) for v, s in asked]
    assert variants == [("plain", "v1-c0-what"), ("plain", "v1-c0-when"), ("plain", "v1-c0-where"),
                        ("plain", "v2-q0"), ("chain1_where", "v1-c0-where"), ("chain2_when", "v1-c0-when")]
    c1 = asked[4][1]["question"]
    c2 = asked[5][1]["question"]
    assert c1.startswith(WHERE["question"]) and "from <t>1.0</t>s to <t>3.0</t>s" in c1  # chain 1: GT window
    assert "<box>[0,0,10,10]</box>at<t>1.0</t>s" in c2 and "<box>[20,0,30,10]</box>at<t>3.0</t>s" in c2  # chain 2
    assert stage.gt_boxes(WHERE) == {1: [0, 0, 10, 10], 3: [20, 0, 30, 10]}
    assert WHERE["question"] == "Where is the red circle while it moves left?"  # inputs are not modified


def _row(sample, variant, completion, judge=None):
    return {"sample_id": sample["sample_id"], "variant": variant, "task_type": sample["task_type"],
            "completion": completion, "answer": sample["answer"], "judge_score": judge,
            "score": stage.task_score(completion, sample), "format": 0.0}


def test_summary_by_hand():
    samples = [WHAT, WHEN, WHERE, MCQ]
    rows = [
        _row(WHAT, "plain", "<think>x</think><answer>red circle</answer>"),        # acc: exact → correct
        _row(WHEN, "plain", "<think>x</think><answer>From <t>2.0</t>s to <t>3.0</t>s</answer>"),  # tIoU 1/2
        _row(WHERE, "plain", '<think>x</think><answer>{"1":[0,0,10,10]}</answer>'),  # vIoU (1 + 0)/2
        _row(WHERE, "chain1_where", '<think>x</think><answer>{"1":[0,0,10,10],"3":[20,0,30,10]}</answer>'),  # 1
        _row(WHEN, "chain2_when", "<answer>From <t>0.0</t>s to <t>4.0</t>s</answer>"),  # tIoU 2/4
        _row(MCQ, "plain", "<think>x</think><answer>B</answer>"),
    ]
    kind, m = stage.summarize(rows, samples)
    assert kind == "vstar+mcq"
    # plain task scores: open 1.0 (ROUGE of identical text), temporal 0.5, spatiotemporal 0.5, mcq 1.0
    assert m["score/temporal"] == pytest.approx(50.0)
    assert m["score/spatiotemporal"] == pytest.approx(50.0)
    assert m["score/mcq"] == pytest.approx(100.0)
    assert m["score"] == pytest.approx(75.0)
    # V-STaR: chain 1 = when (plain) 0.5 + where with the window 1.0; chain 2 = where (plain) 0.5 + when with boxes 0.5
    assert m["vstar/Acc_offline"] == pytest.approx(100.0)
    assert m["vstar/tIoU_1"] == pytest.approx(50.0) and m["vstar/vIoU_1"] == pytest.approx(100.0)
    assert m["vstar/tIoU_2"] == pytest.approx(50.0) and m["vstar/vIoU_2"] == pytest.approx(50.0)
    assert m["vstar/AM_1"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)
    assert m["vstar/medium/n_items"] == 1  # 70 s → the 60–180 s bucket
    assert m["mcq/accuracy"] == pytest.approx(100.0) and m["mcq/first_colour/accuracy"] == pytest.approx(100.0)


def test_judge_section_and_benchmark_errors():
    assert stage.judge_section({"judge": {"backend": "none"}}) is None
    j = stage.judge_section({"judge": {"backend": "llm", "base_url": "http://x/v1", "model": "m"}})
    assert j["engine"] == "openai" and j["max_attempts"] == 3
    with pytest.raises(Exception, match="evaluate.judge.bogus"):
        stage.judge_section({"judge": {"backend": "llm", "bogus": 1}})
    with pytest.raises(stage.EvalError, match="benchmark 'nope' is not configured"):
        stage.benchmark_config({"benchmarks": [{"name": "synth"}]}, "nope")


# ------------------------------------------------------------------ a real run on the tiny model
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.train.helpers import build_base

    return build_base(tmp_path_factory.mktemp("evalbase"), n_videos=3)


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that scores 3 when the prediction names the reference, else 1."""

    calls = 0

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "judge-model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        req = json.loads(self.rfile.read(n))
        type(self).calls += 1
        text = req["messages"][-1]["content"]
        reply = '{"score": 1}' if type(self).calls % 2 else "not json at all"  # every other reply unparsable
        body = json.dumps({"choices": [{"message": {"content": reply}}], "model": "judge-model",
                           "prompt": text[:0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


def test_run_writes_rows_and_summary(base, tmp_path):
    params = {"evaluate": {"max_new_tokens": 8, "benchmarks": [{"name": "synth", "limit": 3}]}, "prompt": {"mode": "video"}}
    out, js = tmp_path / "synth.parquet", tmp_path / "synth.json"
    summary = stage.run(base["samples"], base["frames"], base["init"], -1, "synth", params, str(out), str(js),
                        str(tmp_path / "rejects.parquet"), progress=False)
    rows = pq.read_table(out).to_pylist()
    assert rows and summary["n_questions"] == len(rows) and summary["n_items"] == 3
    assert json.loads(js.read_text()) == summary
    assert all(r["n_tokens"] <= 8 and 0.0 <= r["score"] <= 1.0 for r in rows)
    assert {r["phase"] for r in rows} == {-1} and summary["metrics"]["score"] >= 0.0
    # greedy decoding: a rerun gives the same completions
    stage.run(base["samples"], base["frames"], base["init"], -1, "synth", params, str(tmp_path / "b.parquet"),
              str(tmp_path / "b.json"), progress=False)
    assert [r["completion"] for r in pq.read_table(tmp_path / "b.parquet").to_pylist()] == [r["completion"] for r in rows]


def test_run_with_llm_judge_scores_what_answers(base, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        params = {"evaluate": {"max_new_tokens": 4, "judge": {"backend": "llm", "base_url": url, "max_attempts": 2,
                                                              "concurrency": 1}},
                  "prompt": {"mode": "video"}}
        summary = stage.run(base["samples"], base["frames"], base["init"], 0, "synth", params,
                            str(tmp_path / "s.parquet"), str(tmp_path / "s.json"), progress=False)
    finally:
        server.shutdown()
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    what = [r for r in rows if r["chain_step"] == "what" and r["variant"] == "plain"]
    assert what and all(r["judge_score"] in (0, 1) for r in what)
    if summary["kind"].startswith("vstar"):
        assert "vstar/Acc" in summary["metrics"] and summary["metrics"]["vstar/Acc"] == 0.0  # scores < 2 are wrong


def test_batched_run_gives_the_rows_of_one_at_a_time(base, tmp_path):
    """evaluate.batch_size decodes questions together (hf: one padded greedy batch) without changing a row."""
    tables = {}
    for size in (1, 8):
        params = {"evaluate": {"max_new_tokens": 16, "batch_size": size}, "prompt": {"mode": "video"}}
        stage.run(base["samples"], base["frames"], base["init"], 0, "synth", params, str(tmp_path / f"{size}.parquet"),
                  str(tmp_path / f"{size}.json"), progress=False)
        tables[size] = pq.read_table(tmp_path / f"{size}.parquet").to_pylist()
    assert len(tables[1]) > 8 and {r["variant"] for r in tables[1]} >= {"plain", "chain1_where", "chain2_when"}
    assert tables[8] == tables[1]
    assert json.loads((tmp_path / "8.json").read_text()) == json.loads((tmp_path / "1.json").read_text())


def test_a_failing_question_is_rejected_alone(base, tmp_path, monkeypatch):
    real = stage.get_engine

    def get_engine(*a, **kw):
        engine = real(*a, **kw)
        generate = engine.generate

        def flaky(reqs, n, sampling):
            if any(r.request_id.endswith("/chain2_when") for r in reqs):
                raise RuntimeError("boom")
            return generate(reqs, n, sampling)

        engine.generate = flaky
        return engine

    monkeypatch.setattr(stage, "get_engine", get_engine)
    params = {"evaluate": {"max_new_tokens": 4, "batch_size": 8}, "prompt": {"mode": "video"}}
    summary = stage.run(base["samples"], base["frames"], base["init"], 0, "synth", params, str(tmp_path / "s.parquet"),
                        str(tmp_path / "s.json"), str(tmp_path / "rejects.parquet"), progress=False)
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    rejects = pq.read_table(tmp_path / "rejects.parquet").to_pylist()
    assert rejects and all(r["reason"] == "generation_failed" and "boom" in r["detail"] for r in rejects)
    assert all(r["id"].endswith("/chain2_when") for r in rejects)
    assert len(rejects) == sum(r["variant"] == "chain1_where" for r in rows)  # one chain2_when per chain item
    assert summary["n_questions"] == len(rows) and "chain2_when" not in {r["variant"] for r in rows}
    assert {r["variant"] for r in rows} == {"plain", "chain1_where"}
