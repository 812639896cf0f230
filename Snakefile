# visd: structured self-distillation for video LLMs. See README.md; the stages live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.27")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# Validate against workflow/schemas/config.schema.yaml and fill its defaults; errors name the key.
include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/rollout.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rmsd.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
        rmsd_targets(),
        rules.report.output,
    default_target: True
