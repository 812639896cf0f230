"""The ``visd`` command: one verb per stage. Verbs are imported lazily so ``visd --help`` is fast.

Each verb module defines ``configure_parser(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("visd.data.synth", "write the seeded synthetic video QA set (H.264 mp4 + annotations)"),
    "prepare-data": ("visd.data.prepare", "import + validate all data sources into samples.parquet"),
    "extract-frames": ("visd.frames", "decode, sample and resize frames of one shard with decord"),
    "build-tiny": ("visd.tiny", "build a tiny random-weight Qwen2.5-VL model + BPE tokenizer offline"),
    "prompt": ("visd.prompts", "render the student / teacher prompt of a sample (for inspection)"),
    "rollout": ("visd.rollout", "sample G rollouts per prompt of one shard (hf or vllm engine)"),
    "reward": ("visd.reward_stage", "score rollouts with the VISD rewards R1-R7 and group advantages"),
    "judge": ("visd.judge.stage", "write a structured diagnosis of every rollout (rules or LLM judge)"),
    "sft": ("visd.sft", "SFT warm-up on reference reasoning (student and teacher views)"),
    "teacher-logits": ("visd.teacher", "cache the EMA teacher's top-K logits of every rollout under its hint"),
    "train": ("visd.train", "train the policy on one phase (visd, grpo, opsd or sft recipe); run under accelerate"),
    "evaluate": ("visd.eval.stage", "greedy-decode a benchmark with one checkpoint; V-STaR, MCQ and task metrics"),
    "kl-gap": ("visd.diagnostics", "KL(teacher view || student view) on held-out references (Visual-OPSD diagnostic)"),
    "report": ("visd.report", "draw the run report: PNG figures + index.html (several runs: method comparison)"),
    "study": ("visd.study", "convergence study: VISD vs GRPO (vs OPSD) from one checkpoint, several seeds"),
    "rmsd-teacher-pool": ("visd.rmsd.pool", "R-MSD: K teacher samples per input, scored by task metric (cached once)"),
    "rmsd-pool": ("visd.rmsd.selection", "R-MSD: filter the teacher samples (q >= tau) and set the matching probabilities"),
    "rmsd-sft": ("visd.rmsd.stage1", "R-MSD Stage 1: SFT on the best kept teacher response per input"),
    "rmsd-discriminator": ("visd.rmsd.discriminator", "R-MSD: warm up / update the discriminator on teacher-vs-student pairs"),
    "rmsd-reward": ("visd.rmsd.stage2", "R-MSD Stage 2 rewards: a*D + b*R_outer + e*R_task + d*R_content, group advantages"),
    "rmsd-ablation": ("visd.rmsd.ablation", "R-MSD ablation table: K / tau / weighting variants from one pool (run, summarize)"),
    "plan": ("visd.plan", "jobs per rule, GPU-hours, cache sizes and wall time of a config, before running it"),
    "check-engines": ("visd.check_engines", "compare hf and vllm logprobs on the same prompts and tokens"),
    "audit": ("visd.audit", "query every table under results/ with DuckDB"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visd",
        description="Structured self-distillation for video LLMs: one verb per workflow stage.",
    )
    from visd import __version__

    parser.add_argument("--version", action="version", version=f"visd {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # prints help / errors for unknown verbs
        return 2
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f"visd {verb}", description=VERBS[verb][1])
    module.configure_parser(parser)
    args = parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
