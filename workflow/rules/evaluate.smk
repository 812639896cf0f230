# Evaluation of the start policy and of every phase's checkpoint, and the KL-gap diagnostic.


rule evaluate:
    input:
        samples=res("samples.parquet"),
        frames=frame_shards(),
        policy=lambda w: policy_for_tag(w.tag),
    output:
        rows=res("eval", "{tag}", "{bench}.parquet"),
        summary=res("eval", "{tag}", "{bench}.json"),
        rejects=res("rejects", "evaluate", "{tag}", "{bench}.parquet"),
    params:
        cfg=stage_params("evaluate", "evaluate", "prompt"),
        phase=lambda w: tag_phase(w.tag),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    log:
        "logs/evaluate/{tag}/{bench}.log",
    benchmark:
        "benchmarks/evaluate/{tag}/{bench}.tsv"
    conda:
        "../../envs/eval.yaml"
    shell:
        "visd evaluate --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
        "--policy {input.policy:q} --phase {params.phase} --benchmark {wildcards.bench} "
        "--out {output.rows:q} --json {output.summary:q} --rejects {output.rejects:q} --no-progress > {log:q} 2>&1"


rule kl_gap:
    input:
        samples=res("samples.parquet"),
        frames=frame_shards(),
        policy=lambda w: policy_for_tag(w.tag),
        baseline=lambda w: [] if w.tag == "start" else res("diagnostics", "kl_gap", "start.json"),
    output:
        res("diagnostics", "kl_gap", "{tag}.json"),
    params:
        cfg=stage_params("kl_gap", "diagnostics", "prompt", "teacher.hint"),
        baseline=lambda w, input: f"--baseline {input.baseline}" if input.baseline else "",
        phase=lambda w: tag_phase(w.tag),
    threads: job_threads("kl_gap")
    resources:
        **job_resources("kl_gap"),
    log:
        "logs/kl_gap/{tag}.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "visd kl-gap --params {params.cfg:q} --samples {input.samples:q} --frames {input.frames:q} "
        "--policy {input.policy:q} --phase {params.phase} {params.baseline} --out {output:q} > {log:q} 2>&1"
