#!/usr/bin/env bash
# Snakemake runs this inside the environment right after creating it (--sdm conda): install this checkout
# of visd, editable, without touching the pinned dependencies of the environment file next to it.
# VISD_SOURCE is set by workflow/rules/resources.smk to the folder holding the Snakefile.
set -euo pipefail
pip install --no-deps -e "${VISD_SOURCE:?VISD_SOURCE is unset: create the environments through snakemake --sdm conda}"
