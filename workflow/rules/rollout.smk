# Rollouts, rewards and judge per curriculum phase and shard.


rule rollout:
    input:
        samples=res("samples.parquet"),
        frames=res("frames", "shard-{shard}.parquet"),
        policy=lambda w: policy_for_phase(w.phase),
    output:
        rollouts=res("rollouts", "phase-{phase}", "shard-{shard}.parquet"),
        rejects=res("rejects", "rollout", "phase-{phase}", "shard-{shard}.parquet"),
    params:
        cfg=stage_params("rollout", "seed", "rollout", "prompt"),
    threads: job_threads("rollout")
    resources:
        **job_resources("rollout"),
    log:
        "logs/rollout/phase-{phase}/shard-{shard}.log",
    benchmark:
        "benchmarks/rollout/phase-{phase}/shard-{shard}.tsv"
    conda:
        "../../envs/vllm.yaml"
    shell:
        "visd rollout --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
        "--policy {input.policy:q} --phase {wildcards.phase} --out {output.rollouts:q} "
        "--rejects {output.rejects:q} --no-progress > {log:q} 2>&1"


rule reward:
    input:
        rollouts=res("rollouts", "phase-{phase}", "shard-{shard}.parquet"),
        samples=res("samples.parquet"),
    output:
        rewards=res("rewards", "phase-{phase}", "shard-{shard}.parquet"),
    params:
        cfg=stage_params("reward", "curriculum.phases"),
    log:
        "logs/reward/phase-{phase}/shard-{shard}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "visd reward --params {params.cfg:q} --rollouts {input.rollouts:q} --samples {input.samples:q} "
        "--phase {wildcards.phase} --out {output.rewards:q} > {log:q} 2>&1"


rule judge:
    input:
        rollouts=res("rollouts", "phase-{phase}", "shard-{shard}.parquet"),
        samples=res("samples.parquet"),
    output:
        judge=res("judge", "phase-{phase}", "shard-{shard}.parquet"),
    params:
        cfg=stage_params("judge", "judge"),
        cache=res("judge_cache"),
    resources:
        **job_resources("judge"),
    log:
        "logs/judge/phase-{phase}/shard-{shard}.log",
    benchmark:
        "benchmarks/judge/phase-{phase}/shard-{shard}.tsv"
    conda:
        "../../envs/vllm.yaml"
    shell:
        "visd judge --params {params.cfg:q} --rollouts {input.rollouts:q} --samples {input.samples:q} "
        "--cache-dir {params.cache:q} --out {output.judge:q} > {log:q} 2>&1"
