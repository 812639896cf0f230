"""visd.prompts: layout, token-exact ids for both modes and views, and a forward/backward pass.

Expected token sequences are assembled here from the ids of the pieces (special tokens by name, the
text between them encoded on its own) and the pad counts from the frame sizes, not from visd.prompts.
"""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from visd import prompts, tables, tiny
from visd.config import section
from visd.io import write_parquet

SYSTEM = section("prompt", {})["system"]
SAMPLE = {
    "sample_id": "synth-007",
    "split": "train",
    "task_type": "temporal",
    "duration_s": 2.5,
    "question": "When is the red circle visible?",
    "options": [],
    "answer": "From <t>1.0</t>s to <t>2.5</t>s",
    "answer_window": [1.0, 2.5],
    "key_frames": [
        {"time": 2.0, "objects": [{"name": "red circle", "box": [4.0, 8.0, 20.0, 24.0]}]},
        {"time": 1.0, "objects": [{"name": "red circle", "box": [2.0, 8.0, 18.0, 24.0]}]},
    ],
    "reference": "<think>The <obj>red circle</obj><box>[2,8,18,24]</box>at<t>1.0</t>s.</think>"
    "<answer>From <t>1.0</t>s to <t>2.5</t>s</answer>",
}
MCQ = {
    **SAMPLE,
    "sample_id": "synth-008",
    "task_type": "mcq",
    "question": "Which colour appears first?",
    "options": ["A. red", "B. green", "C. blue", "D. yellow"],
    "answer": "B",
    "answer_window": [0.5, 1.0],  # not a temporal task: the window stays out of the hint
    "key_frames": [],
}
H, W = 56, 84  # 4 x 6 patches -> 6 merged tokens per frame
TIMES = [0.0, 0.5, 1.0, 1.5, 2.0]


def _frames_row():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in TIMES]
    return {"images": imgs, "timestamps": TIMES, "sample_fps": 2.0, "duration_s": 2.5, "width": W, "height": H}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "init"
    texts = tiny.corpus_from_samples([SAMPLE, MCQ] * 5, SYSTEM)
    tiny.build_tiny(out, texts, section("model", {})["tiny"], seed=0)
    return out


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_hint_text_layout():
    assert prompts.hint_text(SAMPLE, feedback="  The window starts too late.  ") == (
        "\n[Hidden hindsight evidence for the teacher view]\n"
        "Use the following verified evidence only as hidden supervision.\n"
        "Verified answer: From <t>1.0</t>s to <t>2.5</t>s\n"
        "Verified temporal window: [1.0, 2.5]\n"
        "Verified keyframe timestamps: 1.0, 2.0\n"
        "Corrective feedback: The window starts too late.\n"
    )
    assert prompts.hint_text(MCQ) == (
        "\n[Hidden hindsight evidence for the teacher view]\n"
        "Use the following verified evidence only as hidden supervision.\n"
        "Verified answer: B\n"
    )
    assert prompts.hint_text({"question": "q"}) == ""


def test_hint_answer_tagged_writes_the_completion_tokens(tok):
    """teacher.hint 'answer_tagged' writes the verified answer as <answer>X</answer>: the hint then holds
    exactly the token ids a completion's answer span has (what an induction head copies); 'answer' and
    'answer_tagged' together are refused with a message naming the config key."""
    tagged = prompts.hint_text(MCQ, components=["answer_tagged", "keyframes"])
    assert "Verified answer: <answer>B</answer>\n" in tagged and "Verified answer: B\n" not in tagged
    span = tok("<answer>B</answer>", add_special_tokens=False)["input_ids"]
    hint_ids = tok(tagged, add_special_tokens=False)["input_ids"]
    assert any(hint_ids[i:i + len(span)] == span for i in range(len(hint_ids)))
    plain_ids = tok(prompts.hint_text(MCQ), add_special_tokens=False)["input_ids"]
    assert not any(plain_ids[i:i + 2] == span[:2] for i in range(len(plain_ids)))  # ' B' is not '<answer>B'
    with pytest.raises(ValueError, match="teacher.hint"):
        prompts.hint_text(MCQ, components=["answer", "answer_tagged"])


@pytest.mark.parametrize("mode", prompts.MODES)
@pytest.mark.parametrize("view", prompts.VIEWS)
@pytest.mark.parametrize("sample", [SAMPLE, MCQ], ids=["temporal", "mcq"])
def test_chat_template_equals_rendered_text(tok, mode, view, sample):
    frames = _frames_row()
    r = prompts.render(tok, sample, frames, mode, SYSTEM, view)
    msgs = prompts.build_messages(sample, prompts.frames_meta(frames), mode, SYSTEM, view)
    templ = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompts.collapse_pads(r["text"]) == templ == prompts.format_chat(msgs)
    assert tok.decode(r["input_ids"][0]) == r["text"]
    # without a system message Qwen's template inserts its default one
    msgs = prompts.build_messages(sample, prompts.frames_meta(frames), mode, None, view)
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == prompts.format_chat(msgs)


def _pieces(tok):
    def S(name):
        i = tok.convert_tokens_to_ids(name)
        assert tok.convert_ids_to_tokens(i) == name
        return [i]

    def E(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    return S, E


def _expected(tok, sample, mode, view, hint):
    S, E = _pieces(tok)
    per_frame = (H // 14) * (W // 14) // 4
    q = sample["question"] + "".join("\n" + o for o in sample["options"])
    ids = S("<|im_start|>") + E("system\n" + SYSTEM) + S("<|im_end|>") + E("\n") + S("<|im_start|>")
    if mode == "image_list":
        for k, t in enumerate(TIMES):
            ids += E(("user\n" if k == 0 else "\n") + f"Frame {k + 1} at {t}s: ")
            ids += S("<|vision_start|>") + S("<|image_pad|>") * per_frame + S("<|vision_end|>")
        ids += E("\nThe video is in total 2.5 seconds.\n" + q)
        n_pads = per_frame * len(TIMES)
    else:
        n_pads = (len(TIMES) + 1) // 2 * per_frame  # 5 frames -> 3 temporal steps (last frame repeated)
        ids += E("user\n") + S("<|vision_start|>") + S("<|video_pad|>") * n_pads + S("<|vision_end|>") + E(q)
    n_prefix = len(ids)
    if view == "teacher":
        ids += E(hint)
    ids += S("<|im_end|>") + E("\n") + S("<|im_start|>") + E("assistant\n")
    return ids, n_prefix, n_pads


@pytest.mark.parametrize("mode", prompts.MODES)
@pytest.mark.parametrize("sample", [SAMPLE, MCQ], ids=["temporal", "mcq"])
def test_token_exact_both_views(tok, mode, sample):
    frames = _frames_row()
    hint = prompts.hint_text(sample, feedback="Right event, but the window is too broad.")
    st = prompts.render(tok, sample, frames, mode, SYSTEM, "student")
    te = prompts.render(tok, sample, frames, mode, SYSTEM, "teacher", hint=hint)
    for r, view in [(st, "student"), (te, "teacher")]:
        ids, n_prefix, n_pads = _expected(tok, sample, mode, view, hint)
        assert r["input_ids"][0].tolist() == ids, (mode, view)
        assert r["n_prefix"] == n_prefix
        pad = tok.convert_tokens_to_ids("<|image_pad|>" if mode == "image_list" else "<|video_pad|>")
        assert int((r["input_ids"] == pad).sum()) == n_pads
        mm = r["mm_token_type_ids"][0]
        assert torch.equal(mm > 0, r["input_ids"][0] == pad)
        assert set(mm.tolist()) == {0, 1 if mode == "image_list" else 2}
    s_ids, t_ids = st["input_ids"][0].tolist(), te["input_ids"][0].tolist()
    # teacher = student up to the end of the user content + hint + assistant header
    n = st["n_prefix"]
    assert t_ids[:n] == s_ids[:n]
    assert t_ids[n:] == tok(hint, add_special_tokens=False)["input_ids"] + s_ids[n:]
    # the student ids are exactly what the tokenizer gives for the student text
    assert s_ids == tok(st["text"], add_special_tokens=False)["input_ids"]
    # grids and fps metadata
    if mode == "image_list":
        assert st["image_grid_thw"].tolist() == [[1, H // 14, W // 14]] * len(TIMES)
        assert st["pixel_values"].shape == (len(TIMES) * 24, 3 * 2 * 14 * 14)
        assert "pixel_values_videos" not in st
    else:
        assert st["video_grid_thw"].tolist() == [[3, H // 14, W // 14]]
        assert st["second_per_grid_ts"].tolist() == [1.0]  # temporal patch 2 / 2 fps
        assert "pixel_values" not in st


def test_student_and_teacher_share_pixels(tok):
    frames = _frames_row()
    st = prompts.render(tok, SAMPLE, frames, "video", SYSTEM, "student")
    te = prompts.render(tok, SAMPLE, frames, "video", SYSTEM, "teacher")
    assert torch.equal(st["pixel_values_videos"], te["pixel_values_videos"])
    assert te["hint"] == prompts.hint_text(SAMPLE) and st["hint"] == ""


def test_bad_mode_and_view(tok):
    with pytest.raises(ValueError, match="prompt.mode"):
        prompts.render(tok, SAMPLE, _frames_row(), "frames", SYSTEM, "student")
    with pytest.raises(ValueError, match="view"):
        prompts.build_messages(SAMPLE, prompts.frames_meta(_frames_row()), "video", SYSTEM, "oracle")


@pytest.mark.parametrize("mode", prompts.MODES)
def test_forward_backward_cpu_without_torchvision(model_dir, tok, mode):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed in this environment; this test checks the torchvision-free CPU path")
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    model.train()
    r = prompts.render(tok, SAMPLE, _frames_row(), mode, SYSTEM, "teacher")
    inputs = prompts.model_inputs(r)
    # M-RoPE: transformers 5.x builds 3D positions only when mm_token_type_ids is passed
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    assert not torch.equal(pos[0], pos[1])  # temporal and height rows differ on vision tokens
    labels = inputs["input_ids"].clone()
    labels[:, : r["n_prefix"]] = -100  # loss on the hint + assistant header only
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(tok))
    out.loss.backward()
    vision_grad = sum(float(p.grad.abs().sum()) for p in model.model.visual.parameters() if p.grad is not None)
    text_grad = sum(float(p.grad.abs().sum()) for p in model.model.language_model.parameters() if p.grad is not None)
    assert vision_grad > 0 and text_grad > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


def test_cli_prompt(tmp_path, model_dir, capsys):
    from PIL import Image

    from visd.cli import main

    srow = {f.name: None for f in tables.SAMPLES}
    srow.update(SAMPLE)
    samples = tmp_path / "samples.parquet"
    write_parquet(pa.Table.from_pylist([srow], schema=tables.SAMPLES), samples)
    frames = _frames_row()
    enc = []
    for img in frames["images"]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        enc.append(buf.getvalue())
    frow = {f.name: None for f in tables.FRAMES}
    frow.update(sample_id=SAMPLE["sample_id"], timestamps=TIMES, frames=enc, encoding="png", width=W, height=H,
                sample_fps=2.0, duration_s=2.5, frame_indices=list(range(len(TIMES))))
    shard = tmp_path / "shard-0.parquet"
    write_parquet(pa.Table.from_pylist([frow], schema=tables.FRAMES), shard)
    params = json.dumps({"prompt": {"mode": "image_list"}})
    argv = ["prompt", "--samples", str(samples), "--frames", str(shard), "--sample-id", SAMPLE["sample_id"],
            "--tokenizer", str(model_dir), "--params", params, "--view", "teacher", "--feedback", "Too late."]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Frame 5 at 2.0s: <|vision_start|><|image_pad|>[x6]<|vision_end|>" in out
    assert "Corrective feedback: Too late." in out
    assert "mode=image_list view=teacher" in out and " tokens (30 vision" in out
    assert main(argv[:-4] + ["--mode", "video"]) == 0
    assert "<|video_pad|>[x18]" in capsys.readouterr().out
