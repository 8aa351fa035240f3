#!/usr/bin/env bash
# Measurements behind docs/findings.md (tiny model, reversal task, CPU, threads=1).
# Usage: docs/findings/kernels/measure.sh OUT_DIR   (then summarize.py OUT_DIR > raw.json)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/findings_kernels}
py=${PY:-.venv/bin/python}
export WANDB_MODE=disabled
common=(steps=12 eval_every=100 eval_problems=16 threads=1 logger=disabled checkpoint_every=12)
cell() {  # name, overrides...
  local name=$1; shift
  for seed in 0 1 2; do
    $py -m recipes.grpo "${common[@]}" seed=$seed "run_dir=$out/$name/s$seed" "$@" >/dev/null
  done
}
cell fp16-fp16 trainer_precision=fp16 generator_precision=fp16
cell bf16-bf16 trainer_precision=bf16 generator_precision=bf16
cell fp8-fp8 trainer_precision=fp8_blockwise generator_precision=fp8_blockwise
cell bf16-fp8 trainer_precision=bf16 generator_precision=fp8_blockwise
cell bf16-bf16-lmhead32 trainer_precision=bf16 generator_precision=bf16 lm_head_fp32=true
cell bf16-bf16-exact trainer_precision=bf16 generator_precision=bf16 generator/kernels=exact
# FP8 end to end with the trainer recipe's activation scales on the generator too (same grid on both sides).
cell fp8-fp8-recipe-scales trainer_precision=fp8_blockwise generator_precision=fp8_blockwise \
    generator.kernels.fp8_activation_scaling=recipe
# Source ablation on the bf16/bf16 seed-0 policy after its 12 steps.
for pair in "bf16 bf16" "bf16 fp8_blockwise" "fp8_blockwise fp8_blockwise" "fp16 fp16"; do
  set -- $pair
  $py -m recipes.attribute init_from=$out/bf16-bf16/s0 trainer_precision=$1 generator_precision=$2 threads=1 \
      "run_dir=$out/attribute/$1-$2" >/dev/null
done
$py -m recipes.attribute init_from=$out/bf16-bf16/s0 trainer_precision=bf16 generator_precision=bf16 lm_head_fp32=true \
    threads=1 "run_dir=$out/attribute/bf16-bf16-lmhead32" >/dev/null
