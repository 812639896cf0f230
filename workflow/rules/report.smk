# Run report: one PNG per figure + index.html under results/report (`visd report`); every figure is
# marked with report() so `snakemake --report report.html` shows it with its caption.
from visd.report import RMSD_FIGURES, SINGLE_RUN

REPORT_VERSION = "report/2"  # bump when visd/report.py changes what it draws
REPORT_CATEGORIES = {
    "reward_terms": "Rewards",
    "reward_by_task": "Rewards",
    "lambda": "Training",
    "train_losses": "Training",
    "omega_hist": "Training",
    "sft_loss": "Training",
    "judge_fields": "Judge",
    "logprob_gap": "Engines",
    "eval_metrics": "Evaluation",
    "kl_gap": "Evaluation",
    "rmsd_pool_quality": "R-MSD",
    "rmsd_discriminator": "R-MSD",
    "rmsd_sft_loss": "R-MSD",
    "rmsd_reward_terms": "R-MSD",
}
# Figures this config has data for; `visd report` writes a placeholder PNG for the others.
REPORT_HAS_DATA = {
    "judge_fields": any(needs_judge(p) for p in PHASES),
    "sft_loss": config["sft"]["enabled"],
    "omega_hist": RECIPE in ("visd", "grpo"),
    "eval_metrics": bool(eval_targets()),
    "kl_gap": bool(kl_gap_targets()),
    **{f: RMSD["enabled"] for f in RMSD_FIGURES},  # pool, discriminator, Stage-1 SFT, Stage-2 reward terms
}
REPORT_FIGURES = [f for f in SINGLE_RUN if REPORT_HAS_DATA.get(f, True)]


rule report:
    input:
        samples=res("samples.parquet"),
        metrics=expand(res("metrics", "phase-{phase}.parquet"), phase=PHASES),
        sft=res("metrics", "sft.parquet") if config["sft"]["enabled"] else [],
        rollouts=[f for p in PHASES for f in phase_tables("rollouts", p)],
        rewards=[f for p in PHASES for f in phase_tables("rewards", p)],
        judge=[f for p in PHASES if needs_judge(p) for f in phase_tables("judge", p)],
        evals=eval_targets(),
        kl_gap=kl_gap_targets(),
        rmsd_pool=rmsd_pool_shards() if RMSD["enabled"] else [],
        rmsd_discriminator=(
            [res("metrics", "rmsd-discriminator-warmup.parquet")]
            + expand(res("metrics", "rmsd-discriminator-phase-{phase}.parquet"), phase=PHASES)
            if RMSD["enabled"]
            else []
        ),
        rmsd_sft=res("metrics", "rmsd-sft.parquet") if RMSD["enabled"] else [],
        rmsd_teacher_sft=(
            res("metrics", "rmsd-teacher-sft.parquet")
            if RMSD["enabled"] and RMSD["teacher"]["model"] == "workflow"
            else []
        ),
    output:
        html=res("report", "index.html"),
        **{
            f: report(
                res("report", f"{f}.png"),
                caption=f"../report/{f}.rst",
                category=REPORT_CATEGORIES.get(f, "Other"),
            )
            for f in REPORT_FIGURES
        },
    params:
        version=REPORT_VERSION,
        results=lambda w, input: str(Path(input.samples).parent),
        label="rmsd" if RMSD["enabled"] else RECIPE,
        out=lambda w, output: str(Path(output.html).parent),
    log:
        "logs/report/report.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "visd report --results {params.results:q} --label {params.label:q} --out {params.out:q} > {log:q} 2>&1"
