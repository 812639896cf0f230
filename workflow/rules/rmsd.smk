# R-MSD (METHODS §3; `--configfile config/recipes/rmsd.yaml`): teacher responses → pool (τ) → Stage-1 SFT → per phase:
# rollouts (rollout.smk) → rmsd_reward with D_{P-1} → train (train.smk, recipe grpo, KL to the Stage-1
# model) and rmsd_discriminator D_P = update(D_{P-1}, phase-P rollouts). Requires the `rmsd` schema section
# and `start_policy()` returning the Stage-1 model when rmsd.enabled (see README, "R-MSD").

if RMSD["enabled"]:

    ruleorder: rmsd_reward > reward

    rule rmsd_teacher_init:
        input:
            samples=res("samples.parquet"),
        output:
            model=directory(res("rmsd", "teacher", "init")),
        params:
            cfg=rmsd_params("teacher_init", seed=config["seed"],
                            model={"tiny": {**config["model"]["tiny"], **RMSD["teacher"]["tiny"]}},
                            prompt={"system": config["prompt"]["system"]}),
        log:
            "logs/rmsd_teacher_init/rmsd_teacher_init.log",
        conda:
            "../../envs/train.yaml"
        shell:
            "visd build-tiny --params {params.cfg:q} --samples {input.samples:q} --out {output.model:q} > {log:q} 2>&1"

    rule rmsd_teacher_sft:
        input:
            samples=res("samples.parquet"),
            frames=frame_shards(),
            policy=res("rmsd", "teacher", "init"),
        output:
            model=directory(res("rmsd", "teacher", "sft")),
            metrics=res("metrics", "rmsd-teacher-sft.parquet"),
        params:
            cfg=rmsd_params("teacher_sft", seed=config["seed"], sft={**config["sft"], "steps": RMSD["teacher"]["sft_steps"]},
                            prompt=config["prompt"], teacher={"hint": config["teacher"]["hint"]}),
        threads: job_threads("rmsd_teacher_sft")
        resources:
            **job_resources("rmsd_teacher_sft"),
        log:
            "logs/rmsd_teacher_sft/rmsd_teacher_sft.log",
        benchmark:
            "benchmarks/rmsd_teacher_sft/rmsd_teacher_sft.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "visd sft --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
            "--policy-in {input.policy:q} --out {output.model:q} --metrics {output.metrics:q} --no-progress > {log:q} 2>&1"

    rule rmsd_teacher_pool:
        input:
            samples=res("samples.parquet"),
            frames=res("frames", "shard-{shard}.parquet"),
            teacher=rmsd_teacher(),
        output:
            responses=res("rmsd", "responses", "shard-{shard}.parquet"),
            rejects=res("rejects", "rmsd_teacher_pool", "shard-{shard}.parquet"),
        params:
            cfg=rmsd_params("pool", seed=config["seed"], prompt=config["prompt"],
                            rmsd={"teacher": RMSD["teacher"],
                                  "pool": {k: v for k, v in RMSD["pool"].items() if k not in ("tau", "weighting")}}),
        threads: job_threads("rmsd_teacher_pool")
        resources:
            **job_resources("rmsd_teacher_pool"),
        log:
            "logs/rmsd_teacher_pool/shard-{shard}.log",
        benchmark:
            "benchmarks/rmsd_teacher_pool/shard-{shard}.tsv"
        conda:
            "../../envs/vllm.yaml"
        shell:
            "visd rmsd-teacher-pool --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
            "--teacher {input.teacher:q} --out {output.responses:q} --rejects {output.rejects:q} --no-progress > {log:q} 2>&1"

    # τ and the weighting only select among the cached responses: changing them reruns this, not the teacher
    rule rmsd_pool:
        input:
            responses=res("rmsd", "responses", "shard-{shard}.parquet"),
        output:
            pool=res("rmsd", "pool", "shard-{shard}.parquet"),
            rejects=res("rejects", "rmsd_pool", "shard-{shard}.parquet"),
        params:
            cfg=rmsd_params("select", rmsd={"pool": {k: RMSD["pool"][k] for k in ("tau", "weighting")}}),
        localrule: True
        log:
            "logs/rmsd_pool/shard-{shard}.log",
        conda:
            "../../envs/data.yaml"
        shell:
            "visd rmsd-pool --params {params.cfg:q} --responses {input.responses:q} --out {output.pool:q} "
            "--rejects {output.rejects:q} > {log:q} 2>&1"

    rule rmsd_sft:
        input:
            samples=res("samples.parquet"),
            frames=frame_shards(),
            pool=rmsd_pool_shards(),
            policy=rmsd_student_in(),
        output:
            model=directory(res("models", "rmsd-sft")),
            metrics=res("metrics", "rmsd-sft.parquet"),
        params:
            cfg=rmsd_params("sft", seed=config["seed"], prompt=config["prompt"], **rmsd_slice("sft")),
        threads: job_threads("rmsd_sft")
        resources:
            **job_resources("rmsd_sft"),
        log:
            "logs/rmsd_sft/rmsd_sft.log",
        benchmark:
            "benchmarks/rmsd_sft/rmsd_sft.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "visd rmsd-sft --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
            "--pool {input.pool:q} --policy-in {input.policy:q} --out {output.model:q} --metrics {output.metrics:q} "
            "--no-progress > {log:q} 2>&1"

    rule rmsd_discriminator_warmup:
        input:
            samples=res("samples.parquet"),
            frames=frame_shards(),
            pool=rmsd_pool_shards(),
            rollouts=phase_tables("rollouts", 0),
            student=res("models", "rmsd-sft"),
        output:
            model=directory(res("rmsd", "discriminator", "warmup")),
            metrics=res("metrics", "rmsd-discriminator-warmup.parquet"),
        params:
            cfg=rmsd_params("discriminator", seed=config["seed"], prompt=config["prompt"],
                            **rmsd_slice("pool", "discriminator")),
        threads: job_threads("rmsd_discriminator_warmup")
        resources:
            **job_resources("rmsd_discriminator_warmup"),
        log:
            "logs/rmsd_discriminator/warmup.log",
        benchmark:
            "benchmarks/rmsd_discriminator/warmup.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "visd rmsd-discriminator --warmup --params {params.cfg:q} --phase 0 --samples {input.samples:q} "
            "--frames {input.frames:q} --pool {input.pool:q} --rollouts {input.rollouts:q} --d-in {input.student:q} "
            "--out {output.model:q} --metrics {output.metrics:q} --no-progress > {log:q} 2>&1"

    rule rmsd_discriminator:
        input:
            samples=res("samples.parquet"),
            frames=frame_shards(),
            pool=rmsd_pool_shards(),
            rollouts=lambda w: phase_tables("rollouts", w.phase),
            d_in=lambda w: discriminator_before(w.phase),
        output:
            model=directory(res("rmsd", "discriminator", "phase-{phase}")),
            metrics=res("metrics", "rmsd-discriminator-phase-{phase}.parquet"),
        params:
            cfg=rmsd_params("discriminator", seed=config["seed"], prompt=config["prompt"],
                            **rmsd_slice("pool", "discriminator")),
        threads: job_threads("rmsd_discriminator")
        resources:
            **job_resources("rmsd_discriminator"),
        log:
            "logs/rmsd_discriminator/phase-{phase}.log",
        benchmark:
            "benchmarks/rmsd_discriminator/phase-{phase}.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "visd rmsd-discriminator --params {params.cfg:q} --phase {wildcards.phase} --samples {input.samples:q} "
            "--frames {input.frames:q} --pool {input.pool:q} --rollouts {input.rollouts:q} --d-in {input.d_in:q} "
            "--out {output.model:q} --metrics {output.metrics:q} --no-progress > {log:q} 2>&1"

    rule rmsd_reward:
        input:
            samples=res("samples.parquet"),
            frames=res("frames", "shard-{shard}.parquet"),
            rollouts=res("rollouts", "phase-{phase}", "shard-{shard}.parquet"),
            pool=res("rmsd", "pool", "shard-{shard}.parquet"),
            discriminator=lambda w: discriminator_before(w.phase),
            reference=rmsd_reference(),
        output:
            rewards=res("rewards", "phase-{phase}", "shard-{shard}.parquet"),
        params:
            cfg=rmsd_params("reward", seed=config["seed"], prompt=config["prompt"],
                            curriculum={"phases": config["curriculum"]["phases"]},
                            **rmsd_slice("pool", "discriminator", "reward")),
            reference=lambda w, input: f"--reference {input.reference}" if input.reference else "",
        threads: job_threads("rmsd_reward")
        resources:
            **job_resources("rmsd_reward"),
        log:
            "logs/rmsd_reward/phase-{phase}/shard-{shard}.log",
        benchmark:
            "benchmarks/rmsd_reward/phase-{phase}/shard-{shard}.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "visd rmsd-reward --params {params.cfg:q} --phase {wildcards.phase} --samples {input.samples:q} "
            "--frames {input.frames:q} --rollouts {input.rollouts:q} --pool {input.pool:q} "
            "--discriminator {input.discriminator:q} {params.reference} --out {output.rewards:q} > {log:q} 2>&1"

    # ---------------------------------------------------------------- the ablation table (target rmsd_ablation)
    # `snakemake --cores all rmsd_ablation --configfile config/config.yaml config/recipes/rmsd.yaml
    #  config/experiments/rmsd-ablation.yaml`: every variant of rmsd.ablation.variants reads the pool sampled
    # once at rmsd.pool.k and redoes Stage 1 and Stage 2 in one job (visd rmsd-ablation run).
    rule rmsd_ablation_run:
        input:
            samples=res("samples.parquet"),
            frames=frame_shards(),
            responses=expand(res("rmsd", "responses", "shard-{shard}.parquet"), shard=SHARDS),
            student=rmsd_student_in(),
        output:
            done=res("rmsd_ablation", "{variant}", "done.json"),
        params:
            cfg=lambda w: ablation_params(w.variant),
            out_root=lambda w, output: str(Path(output.done).parent),
        wildcard_constraints:
            variant="|".join(re.escape(n) for n in ABLATION_NAMES) or "(?!)",
        threads: 1
        log:
            "logs/rmsd_ablation/{variant}.log",
        benchmark:
            "benchmarks/rmsd_ablation/{variant}.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} visd rmsd-ablation run --params {params.cfg:q} --variant {wildcards.variant} "
            "--samples {input.samples:q} --frames {input.frames:q} --responses {input.responses:q} --student {input.student:q} "
            "--out-root {params.out_root:q} --done {output.done:q} > {log:q} 2>&1"

    rule rmsd_ablation_summary:
        input:
            runs=expand(res("rmsd_ablation", "{variant}", "done.json"), variant=ABLATION_NAMES),
        output:
            csv=res("rmsd_ablation", "ablation.csv"),
            json=res("rmsd_ablation", "ablation.json"),
            md=res("rmsd_ablation", "ablation.md"),
        log:
            "logs/rmsd_ablation/summary.log",
        conda:
            "../../envs/eval.yaml"
        shell:
            "visd rmsd-ablation summarize --runs {input.runs:q} --csv {output.csv:q} --json {output.json:q} "
            "--md {output.md:q} > {log:q} 2>&1"

    rule rmsd_ablation:
        input:
            rules.rmsd_ablation_summary.output,
        default_target: False
