# Inputs that live outside the workflow: the initial model folder (model.init) on the cluster's filesystem.
# A user plans a run (`snakemake -n`, `visd plan`) before downloading 15 GB of weights, so a dry run must
# not need the folder: rule missing_model stands in for it and a warning names the key. A real run stops
# before submitting any job (onstart runs only when jobs will execute), with the same message.
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

_init = config["model"]["init"]
if _init != "tiny" and not Path(_init).exists():
    _msg = (f"model.init: the folder {_init!r} does not exist (working directory {os.getcwd()}); "
            "download the checkpoint there or point model.init at it")
    logger.warning(f"{_msg}. A dry run plans the jobs anyway; rule missing_model stands in for the folder.")

    rule missing_model:
        output:
            directory(_init),
        log:
            "logs/missing_model.log",
        localrule: True
        conda:
            "../../envs/data.yaml"
        shell:
            f"echo {shlex.quote(_msg)} | tee {{log:q}} >&2; exit 1"

    onstart:
        if not Path(_init).exists():
            raise WorkflowError(_msg)
