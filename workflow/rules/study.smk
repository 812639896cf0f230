# The convergence study (README, "Convergence study"): `snakemake --cores all study --configfile
# config/experiments/convergence.yaml`. Every (method, seed) run starts from the main workflow's
# start policy and reads its samples and frames; one job per run executes its phases in-process.

STUDY = config["study"]


rule study_run:
    input:
        samples=res("samples.parquet"),
        frames=frame_shards(),
        policy=start_policy(),
    output:
        done=res("study", "{method}", "seed-{seed}", "done.json"),
    params:
        cfg=lambda w: canonical_json({"version": "study/1", **{k: v for k, v in config.items() if k != "study"},
                                      "study": {k: STUDY[k] for k in ("eval_every", "benchmark", "metric")}}),
        out_root=lambda w, output: str(Path(output.done).parent),
    wildcard_constraints:
        method="|".join(STUDY["methods"]),
        seed=r"\d+",
    threads: 1
    log:
        "logs/study/{method}/seed-{seed}.log",
    benchmark:
        "benchmarks/study/{method}/seed-{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "OMP_NUM_THREADS={threads} visd study run --params {params.cfg:q} --method {wildcards.method} "
        "--seed {wildcards.seed} --samples {input.samples:q} --frames {input.frames:q} "
        "--start-policy {input.policy:q} --out-root {params.out_root:q} --done {output.done:q} > {log:q} 2>&1"


rule study_summary:
    input:
        runs=expand(res("study", "{method}", "seed-{seed}", "done.json"), method=STUDY["methods"], seed=STUDY["seeds"]),
        start=res("eval", "start", f"{STUDY['benchmark']}.json"),
    output:
        csv=res("study", "convergence.csv"),
        json=res("study", "convergence.json"),
        png=report(res("study", "convergence.png"), caption="../report/convergence.rst", category="Convergence study"),
    params:
        metric=STUDY["metric"],
        baseline=STUDY["baseline"],
    log:
        "logs/study/summary.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "visd study summarize --runs {input.runs:q} --start-eval {input.start:q} --metric {params.metric} "
        "--baseline {params.baseline} --csv {output.csv:q} --json {output.json:q} --png {output.png:q} > {log:q} 2>&1"


rule study_report:
    input:
        runs=expand(res("study", "{method}", f"seed-{STUDY['seeds'][0]}", "done.json"), method=STUDY["methods"]),
    output:
        html=res("study", "report", "index.html"),
    params:
        main=lambda w, input: str(Path(input.runs[STUDY["methods"].index(STUDY["baseline"])]).parent)
        if STUDY["baseline"] in STUDY["methods"] else str(Path(input.runs[0]).parent),
        label=STUDY["baseline"] if STUDY["baseline"] in STUDY["methods"] else STUDY["methods"][0],
        compare=lambda w, input: " ".join(f"--compare {m}={Path(r).parent}" for m, r in zip(STUDY["methods"], input.runs)
                                          if m != (STUDY["baseline"] if STUDY["baseline"] in STUDY["methods"] else STUDY["methods"][0])),
        out=lambda w, output: str(Path(output.html).parent),
    log:
        "logs/study/report.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "visd report --results {params.main:q} --label {params.label} {params.compare} --out {params.out:q} > {log:q} 2>&1"


rule study:
    input:
        rules.study_summary.output,
        rules.study_report.output,
    default_target: False
