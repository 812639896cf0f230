"""Chat prompts for both input modes and both views (student / privileged teacher).

Layout (Qwen2-VL chat format; ``⟨pads k⟩`` = ``<|vision_start|>`` + n_k pad tokens + ``<|vision_end|>``,
``n_k = t*h*w / merge²`` of the k-th grid)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n
      image_list:  Frame 1 at 0.0s: ⟨image pads 1⟩\\n ... Frame N at 3.5s: ⟨image pads N⟩\\n
                   The video is in total 4 seconds.\\n
      video:       ⟨video pads⟩                       (fps metadata: second_per_grid_ts = 2 / sample_fps)
    {question}[\\nA. ...\\nB. ...]                     <- end of the shared prefix (n_prefix tokens)
    [teacher only: hint block, see hint_text()]
    <|im_end|>\\n<|im_start|>assistant\\n

The teacher view inserts the hidden hint just before the assistant turn, inside the user turn, as the
released VISD code does (``inject_hindsight_hint_into_prompt``). Token ids are built per segment:
``ids(teacher) = ids(prefix) + ids(hint) + ids(<|im_end|>\\n<|im_start|>assistant\\n)`` and
``ids(student) = ids(prefix) + ids(<|im_end|>...)``, so the student prompt up to the end of the user
content is a token-exact prefix of the teacher prompt. The student ids equal ``tokenizer(text)``; the
teacher ids may differ from re-tokenizing the teacher text at the prefix/hint seam (BPE may merge
``?`` with the hint's leading newline), so every stage uses ``input_ids`` from :func:`render`, never
a re-tokenised text.

Frame times print as ``round(t, 1)`` (``0.0s``, as in VISD); the total duration as ``round(d, 1)``
without a trailing ``.0``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("video", "image_list")
VIEWS = ("student", "teacher")
DEFAULT_SYSTEM = "You are a helpful assistant."  # what Qwen's chat template inserts when there is none

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
ASSISTANT_TAIL = f"{IM_END}\n{IM_START}assistant\n"

HINT_HEADER = "[Hidden hindsight evidence for the teacher view]"
HINT_INTRO = "Use the following verified evidence only as hidden supervision."
TEMPORAL_TASKS = ("temporal", "spatiotemporal")


# --------------------------------------------------------------------------------------------- text pieces
def fmt_seconds(x: float) -> str:
    """Frame / evidence time as in VISD: ``round(t, 1)`` → ``"0.0"``, ``"2.5"``."""
    return f"{round(float(x), 1)}"


def fmt_duration(x: float) -> str:
    r = round(float(x), 1)
    return str(int(r)) if float(r).is_integer() else str(r)


def frame_line_prefix(k: int, t: float) -> str:
    """Text before the k-th (1-based) image in image_list mode."""
    return f"Frame {k} at {fmt_seconds(t)}s: "


def total_line(duration_s: float) -> str:
    return f"The video is in total {fmt_duration(duration_s)} seconds.\n"


def question_text(sample: Mapping[str, Any]) -> str:
    """The question, then MCQ options one per line (options are stored as ``"A. red"``)."""
    q = (sample.get("question") or "").strip()
    opts = [o for o in (sample.get("options") or []) if o]
    return q + ("\n" + "\n".join(opts) if opts else "")


HINT_COMPONENTS = ("answer", "window", "keyframes", "feedback")  # config key teacher.hint (the default: all)
# ``answer_tagged`` may stand in for ``answer``: the verified answer written as <answer>X</answer>
HINT_CHOICES = HINT_COMPONENTS + ("answer_tagged",)


def hint_text(sample: Mapping[str, Any], feedback: str | None = None, *,
              components: Iterable[str] | None = None) -> str:
    """Privileged teacher context (METHODS §1.5), VISD's layout; ``""`` when there is nothing to add.

    ``components`` (config ``teacher.hint``) selects which lines may appear, a subset of
    :data:`HINT_COMPONENTS`; ``None`` = all of them. A line also needs its data (a window only for
    temporal tasks, feedback only when given). ``answer_tagged`` instead of ``answer`` writes the verified
    answer between the answer tags (``Verified answer: <answer>B</answer>``), in the tokens a completion
    writes it with, so that reading it into the completion's ``<answer>`` is a plain copy of the token
    after ``<answer>`` (an induction pattern; a tiny model cannot learn a per-symbol map from
    ``Verified answer: B`` to ``<answer>B``).

    ::

        \\n[Hidden hindsight evidence for the teacher view]
        Use the following verified evidence only as hidden supervision.
        Verified answer: {answer}                      (answer_tagged: <answer>{answer}</answer>)
        Verified temporal window: [{s}, {e}]          (temporal / spatiotemporal tasks)
        Verified keyframe timestamps: {t1}, {t2}, ...  (sorted, unique)
        Corrective feedback: {feedback}               (when given)\\n
    """
    use = set(HINT_COMPONENTS if components is None else components)
    if use - set(HINT_CHOICES):
        raise ValueError(f"unknown hint components {sorted(use - set(HINT_CHOICES))}; "
                         f"use a subset of {list(HINT_CHOICES)} (config key teacher.hint)")
    if {"answer", "answer_tagged"} <= use:
        raise ValueError("hint components 'answer' and 'answer_tagged' both write the verified answer; "
                         "keep one of them (config key teacher.hint)")
    parts = [HINT_HEADER, HINT_INTRO]
    answer = sample.get("answer")
    if "answer" in use and answer not in (None, ""):
        parts.append(f"Verified answer: {answer}")
    if "answer_tagged" in use and answer not in (None, ""):
        parts.append(f"Verified answer: <answer>{answer}</answer>")
    window = sample.get("answer_window")
    if "window" in use and sample.get("task_type") in TEMPORAL_TASKS and window is not None and len(window) == 2:
        parts.append(f"Verified temporal window: [{fmt_seconds(window[0])}, {fmt_seconds(window[1])}]")
    times = sorted({round(float(kf["time"]), 1) for kf in (sample.get("key_frames") or []) if kf.get("time") is not None})
    if "keyframes" in use and times:
        parts.append("Verified keyframe timestamps: " + ", ".join(fmt_seconds(t) for t in times))
    if "feedback" in use and feedback and feedback.strip():
        parts.append(f"Corrective feedback: {feedback.strip()}")
    if len(parts) == 2:
        return ""
    return "\n" + "\n".join(parts) + "\n"


def template_texts(system: str | None = None) -> list[str]:
    """Every fixed string the prompts can contain (tokenizer corpus for ``visd build-tiny``)."""
    texts = [system or DEFAULT_SYSTEM, DEFAULT_SYSTEM, "user\n", "assistant\n", "system\n", HINT_HEADER, HINT_INTRO]
    for k in range(1, 65):
        texts.append(frame_line_prefix(k, (k - 1) * 0.5) + "\n")
    for n in range(1, 121):
        texts.append(total_line(n))
        texts.append(total_line(n + 0.5))
    texts += [
        "Verified answer: A", "Verified temporal window: [1.0, 2.5]", "Verified keyframe timestamps: 0.5, 1.0, 2.0",
        "Corrective feedback: The answer is wrong.",
        "<think>I see <obj>red circle</obj><box>[10,20,30,40]</box>at<t>1.5</t>s.</think><answer>A</answer>",
        "From <t>1.0</t>s to <t>2.5</t>s", "0 1 2 3 4 5 6 7 8 9 10 0.5 1.5 [0, 0, 56, 56]",
    ]
    return texts


# --------------------------------------------------------------------------------------------- messages
def frames_meta(frames: Mapping[str, Any]) -> dict:
    """The metadata of a frames row the text needs (everything but the pixels)."""
    ts = [float(t) for t in (frames.get("timestamps") or [])]
    return {
        "timestamps": ts,
        "sample_fps": float(frames["sample_fps"]) if frames.get("sample_fps") else None,
        "duration_s": float(frames["duration_s"]) if frames.get("duration_s") is not None else None,
        "width": frames.get("width"),
        "height": frames.get("height"),
    }


def _check(mode: str, view: str) -> None:
    if mode not in MODES:
        raise ValueError(f"prompt mode {mode!r} is unknown; use one of {MODES} (config key prompt.mode)")
    if view not in VIEWS:
        raise ValueError(f"prompt view {view!r} is unknown; use one of {VIEWS}")


def build_messages(
    sample: Mapping[str, Any],
    frames_meta: Mapping[str, Any],
    mode: str,
    system: str | None,
    view: str = "student",
    hint: str | None = None,
) -> list[dict]:
    """HF chat messages (system + user, no assistant turn) in Qwen2-VL content-list form.

    ``hint``: the teacher's hint block (default ``hint_text(sample)``); ignored for the student view.
    """
    _check(mode, view)
    content: list[dict] = []
    if mode == "image_list":
        ts = list(frames_meta.get("timestamps") or [])
        if not ts:
            raise ValueError(f"sample {sample.get('sample_id')}: frames row has no timestamps")
        for k, t in enumerate(ts, start=1):
            content.append({"type": "text", "text": frame_line_prefix(k, t)})
            content.append({"type": "image"})
            content.append({"type": "text", "text": "\n"})
        duration = frames_meta.get("duration_s")
        if duration is None:
            duration = sample.get("duration_s") or ts[-1]
        content.append({"type": "text", "text": total_line(duration)})
    else:
        content.append({"type": "video"})
    content.append({"type": "text", "text": question_text(sample)})
    if view == "teacher":
        h = hint_text(sample) if hint is None else hint
        if h:
            content.append({"type": "text", "text": h})
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    return messages


def _content_text(content: Sequence[Mapping[str, Any]] | str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for c in content:
        if c.get("type") == "image" or "image" in c or "image_url" in c:
            out.append(VISION_START + IMAGE_PAD + VISION_END)
        elif c.get("type") == "video" or "video" in c:
            out.append(VISION_START + VIDEO_PAD + VISION_END)
        elif "text" in c:
            out.append(c["text"])
    return "".join(out)


def format_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Python twin of Qwen2-VL's chat template (one pad per image / video)."""
    out = []
    for i, m in enumerate(messages):
        if i == 0 and m["role"] != "system":
            out.append(f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n")
        out.append(f"{IM_START}{m['role']}\n{_content_text(m['content'])}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


_PAD_RUN = re.compile(r"(<\|image_pad\|>|<\|video_pad\|>)(?:\1)*")


def collapse_pads(text: str, show_count: bool = False) -> str:
    """Runs of pad tokens → one pad (``show_count``: ``<|image_pad|>[x16]``)."""

    def rep(m: re.Match) -> str:
        n = len(m.group(0)) // len(m.group(1))
        return m.group(1) + (f"[x{n}]" if show_count else "")

    return _PAD_RUN.sub(rep, text)


# --------------------------------------------------------------------------------------------- render
def decoded_frames(frames: Mapping[str, Any]) -> list[np.ndarray]:
    """uint8 HxWx3 frames of a frames row: ``frames["images"]`` when already decoded, else decode."""
    if frames.get("images") is not None:
        return [np.asarray(f, dtype=np.uint8) for f in frames["images"]]
    from visd.frames import decode_frames

    return decode_frames(frames)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render(
    tokenizer,
    sample: Mapping[str, Any],
    frames: Mapping[str, Any],
    mode: str,
    system: str | None,
    view: str = "student",
    hint: str | None = None,
) -> dict:
    """Text, token ids and vision tensors of one prompt (batch of 1).

    Returns ``text`` (pads expanded), ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids``
    (``[1, L]``; 0 text, 1 image, 2 video — transformers 5.x needs ``mm_token_type_ids`` to build
    the 3D M-RoPE positions), ``n_prefix`` (tokens shared by both views), ``hint``, and either
    ``pixel_values`` + ``image_grid_thw`` (image_list) or ``pixel_values_videos`` + ``video_grid_thw``
    + ``second_per_grid_ts`` (video). Pass :func:`model_inputs` of it to the model.
    """
    import torch

    from visd import vision

    _check(mode, view)
    images = decoded_frames(frames)
    meta = frames_meta(frames)
    if mode == "image_list":
        if len(images) != len(meta["timestamps"]):
            raise ValueError(
                f"sample {sample.get('sample_id')}: {len(images)} frames but {len(meta['timestamps'])} timestamps"
            )
        vis = vision.image_inputs(images)
        grids = vis["image_grid_thw"].tolist()
        pad_token = IMAGE_PAD
    else:
        vis = vision.video_inputs(images, meta["sample_fps"] or 0.0)
        grids = vis["video_grid_thw"].tolist()
        pad_token = VIDEO_PAD
    counts = [vision.num_tokens(g) for g in grids]

    h = (hint_text(sample) if hint is None else hint) if view == "teacher" else ""
    messages = build_messages(sample, meta, mode, system, view="student")
    prefix = format_chat(messages, add_generation_prompt=True)
    assert prefix.endswith(ASSISTANT_TAIL)
    prefix = prefix[: -len(ASSISTANT_TAIL)]

    pad_id = tokenizer.convert_tokens_to_ids(pad_token)
    prefix_ids: list[int] = []
    k = 0
    for tid in _encode(tokenizer, prefix):
        if tid == pad_id:
            prefix_ids.extend([pad_id] * counts[k])
            k += 1
        else:
            prefix_ids.append(tid)
    if k != len(counts):
        raise AssertionError(f"{k} pad placeholders for {len(counts)} vision grids")
    ids = prefix_ids + (_encode(tokenizer, h) if h else []) + _encode(tokenizer, ASSISTANT_TAIL)

    parts = prefix.split(pad_token)  # expand the single placeholders left to right
    expanded = parts[0] + "".join(pad_token * n + part for n, part in zip(counts, parts[1:]))
    text = expanded + h + ASSISTANT_TAIL

    input_ids = torch.tensor([ids], dtype=torch.long)
    mm = torch.zeros_like(input_ids, dtype=torch.int32)
    mm[input_ids == pad_id] = 1 if mode == "image_list" else 2
    out = {
        "text": text,
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": mm,
        "n_prefix": len(prefix_ids),
        "hint": h,
        "mode": mode,
        "view": view,
    }
    out.update(vis)
    return out


MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


def model_inputs(rendered: Mapping[str, Any]) -> dict:
    """The keyword arguments ``Qwen2_5_VLForConditionalGeneration.forward`` takes from a rendered prompt."""
    return {k: rendered[k] for k in MODEL_INPUT_KEYS if k in rendered}


# --------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples.parquet")
    parser.add_argument("--frames", required=True, nargs="+", help="frames/shard-K.parquet file(s) holding the sample")
    parser.add_argument("--sample-id", required=True)
    parser.add_argument("--tokenizer", default="results/models/init", help="model / tokenizer folder")
    parser.add_argument("--params", default=None, help="config JSON ({prompt: {...}}) or @file")
    parser.add_argument("--mode", choices=MODES, default=None, help="override prompt.mode")
    parser.add_argument("--view", choices=VIEWS, default="student")
    parser.add_argument("--feedback", default=None, help="judge feedback to put in the teacher hint")
    parser.add_argument("--full", action="store_true", help="print every pad token instead of a count")


def _find_row(paths: Iterable[str], sample_id: str, what: str) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for p in paths:
        t = pq.read_table(p)
        t = t.filter(pc.equal(t["sample_id"], sample_id))
        if t.num_rows:
            return t.to_pylist()[0]
    raise SystemExit(f"prompt: sample_id {sample_id!r} not found in {what} {list(paths)}")


def main(args: argparse.Namespace) -> int:
    import os

    from transformers import AutoTokenizer

    from visd.config import parse_params, section

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = section("prompt", parse_params(args.params).get("prompt"))
    mode = args.mode or cfg["mode"]
    sample = _find_row([args.samples], args.sample_id, "samples table")
    frames = _find_row(args.frames, args.sample_id, "frames shards")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    hint = hint_text(sample, args.feedback) if args.view == "teacher" else None
    r = render(tok, sample, frames, mode, cfg["system"], args.view, hint=hint)
    print(r["text"] if args.full else collapse_pads(r["text"], show_count=True))
    grids = r.get("image_grid_thw", r.get("video_grid_thw")).tolist()
    n_vis = int((r["mm_token_type_ids"] > 0).sum())
    print(
        f"--- {args.sample_id} mode={mode} view={args.view}: {r['input_ids'].shape[1]} tokens "
        f"({n_vis} vision, {r['n_prefix']} shared prefix), grids {grids}",
    )
    return 0
