"""Shared by the cluster tests: a copy of the checkout to run in, Snakemake as a user runs it, dry-run parsing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked + untracked, not ignored), links kept as links, so
    `--profile slurm` finds ./slurm exactly as in a fresh clone; outside git, a copy without run outputs."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (subprocess.CalledProcessError, FileNotFoundError):
        skip = {"results", "logs", "benchmarks", ".snakemake", ".git", ".venv", ".venv-vllm", "__pycache__"}
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if not p.is_dir() and not skip & set(p.relative_to(REPO).parts)]
    for f in files:
        src, dst = REPO / f, dest / f
        if not src.exists() and not src.is_symlink():  # deleted in the working tree
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def job_env(workdir: Path) -> dict:
    """Environment for Snakemake and, through sbatch --export=ALL, for the jobs: this interpreter's
    scripts first, and the copy's visd package ahead of any installed one."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{workdir}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run(workdir: Path, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None):
    r = subprocess.run(snakemake_cmd(*args), check=False, cwd=workdir, env=env or job_env(workdir), capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-8000:]}")
    return r


def job_stats(text: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's "Job stats" table ({} when there is nothing to do)."""
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}
    jobs.pop("total", None)
    return jobs


def planned_jobs(text: str) -> list[dict]:
    """Every job block of a dry run: rule, wildcards, threads, resources (values as printed)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m:
            continue
        job = {"rule": m.group(1), "wildcards": {}, "threads": 1, "resources": {}}
        for line in block.splitlines()[1:]:
            key, _, value = line.strip().partition(": ")
            if key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key == "threads":
                job["threads"] = int(value)
            elif key == "resources":
                job["resources"] = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", value))
        jobs.append(job)
    return jobs
