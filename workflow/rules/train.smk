# SFT warm-up, teacher-logit cache and training, chained across curriculum phases.


rule sft:
    input:
        samples=res("samples.parquet"),
        frames=frame_shards(),
        policy=init_model(),
    output:
        model=directory(res("models", "sft")),
        metrics=res("metrics", "sft.parquet"),
    params:
        cfg=stage_params("sft", "seed", "sft", "prompt", "teacher.hint"),
    threads: job_threads("sft")
    resources:
        **job_resources("sft"),
    log:
        "logs/sft/sft.log",
    benchmark:
        "benchmarks/sft/sft.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "visd sft --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
        "--policy-in {input.policy:q} --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule teacher_logits:
    input:
        samples=res("samples.parquet"),
        frames=res("frames", "shard-{shard}.parquet"),
        rollouts=res("rollouts", "phase-{phase}", "shard-{shard}.parquet"),
        judge=lambda w: res("judge", f"phase-{w.phase}", f"shard-{w.shard}.parquet") if needs_judge(w.phase) else [],
        teacher=lambda w: teacher_for_phase(w.phase),
        reference=reference_model(),
    output:
        teacher=res("teacher", "phase-{phase}", "shard-{shard}.parquet"),
    params:
        cfg=stage_params("teacher_logits", "seed", "teacher", "prompt"),
        judge=lambda w, input: f"--judge {input.judge}" if input.judge else "",
        reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
    threads: job_threads("teacher_logits")
    resources:
        **job_resources("teacher_logits"),
    log:
        "logs/teacher_logits/phase-{phase}/shard-{shard}.log",
    benchmark:
        "benchmarks/teacher_logits/phase-{phase}/shard-{shard}.tsv"
    conda:
        "../../envs/vllm.yaml"
    shell:
        "visd teacher-logits --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
        "--rollouts {input.rollouts:q} {params.judge} --teacher {input.teacher:q} {params.reference} "
        "--phase {wildcards.phase} --out {output.teacher:q} > {log:q} 2>&1"


rule train:
    input:
        samples=res("samples.parquet"),
        frames=frame_shards(),
        rollouts=lambda w: phase_tables("rollouts", w.phase),
        rewards=lambda w: phase_tables("rewards", w.phase),
        teacher=lambda w: phase_tables("teacher", w.phase) if needs_teacher(w.phase) else [],
        policy=lambda w: policy_for_phase(w.phase),
        ema=lambda w: teacher_for_phase(w.phase),
        reference=reference_model(),
    output:
        policy=directory(res("checkpoints", "phase-{phase}", "policy")),
        teacher=directory(res("checkpoints", "phase-{phase}", "teacher")),
        metrics=res("metrics", "phase-{phase}.parquet"),
    params:
        cfg=stage_params("train", "seed", "train", "curriculum", "rollout.group_size", "prompt", "teacher.top_k"),
        out_dir=lambda w, output: str(Path(output.policy).parent),
        cache=lambda w, input: f"--teacher-cache {' '.join(input.teacher)}" if input.teacher else "",
        reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
        launch=accelerate_args,
        tensorboard=lambda w: f"logs/tensorboard/phase-{w.phase}",
    threads: job_threads("train")
    resources:
        **train_resources(),
    log:
        "logs/train/phase-{phase}.log",
    benchmark:
        "benchmarks/train/phase-{phase}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "accelerate launch {params.launch} -m visd.cli train --params {params.cfg:q} --phase {wildcards.phase} "
        "--samples {input.samples:q} --frames {input.frames:q} --rollouts {input.rollouts:q} "
        "--rewards {input.rewards:q} {params.cache} --policy-in {input.policy:q} --teacher-in {input.ema:q} "
        "{params.reference} --out-dir {params.out_dir:q} --metrics {output.metrics:q} "
        "--tensorboard {params.tensorboard:q} --no-progress > {log:q} 2>&1"
