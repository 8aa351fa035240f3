#!/usr/bin/env bash
# GPU benchmark for an H100/H200 (any CUDA machine): bench.benchmarks.throughput on model=125m, model=1b and
# model=qwen2_0p5b (Qwen2.5-0.5B's shapes through transformers, random weights) (train step
# per recipe x engine, tokens/s, MFU, peak memory, monitor overhead, bf16 vs FP8 decode) and the
# GPU-marked tests. Writes docs/bench/gpu_<device>_<date>_<model>.json, ..._pytest.txt, and
# appends dated tables to docs/benchmarks.md.   Usage: scripts/gpu_bench.sh
# Env: PYTHON (an interpreter that already imports bench, torch, hydra; else .venv is set up),
#      MODELS ("name:batch:seq_len ..."), OUT (json dir), MD (markdown file), PERF_ARGS (extra args),
#      ALLOW_CPU=1 (smoke-run the script without CUDA, e.g. MODELS=tiny:4:64 OUT=/tmp/b MD=/tmp/b/b.md).
#
# Offline GPU box: on a connected machine with the box's Python minor version and CPU architecture
# (else add --platform manylinux2014_x86_64 --python-version 3.11 --only-binary=:all:):
#   pip download -d wheelhouse "torch>=2.7" "setuptools>=68" wheel ".[dev]"   # PyPI's Linux torch is the CUDA build
#   pip download -d wheelhouse "transformer-engine[pytorch]>=2.0"             # optional: the te engine rows
# carry wheelhouse/ along with the repo, then on the box:
#   python3 -m venv .venv && .venv/bin/pip install --no-index --find-links wheelhouse -e ".[dev]"
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled
PY=${PYTHON:-python}
if ! "$PY" -c "import bench, torch, hydra" 2>/dev/null; then
  if ! .venv/bin/python -c "import bench, torch, hydra" 2>/dev/null; then
    scripts/setup.sh || exit 1
  fi
  PY=.venv/bin/python
fi
dev=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
if [ "$dev" = cpu ] && [ "${ALLOW_CPU:-0}" != 1 ]; then
  echo "gpu_bench: no CUDA device here (set ALLOW_CPU=1 for a CPU smoke run of this script)" >&2
  exit 2
fi
tag=$(echo "$dev" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia //; s/[^a-z0-9]+/_/g; s/^_|_$//g')
stamp=$(date +%Y%m%d)
OUT=${OUT:-docs/bench}
MD=${MD:-docs/benchmarks.md}
mkdir -p "$OUT"
echo "gpu_bench: $dev with $PY -> $OUT/gpu_${tag}_${stamp}_*.json, $MD"
rc=0
for spec in ${MODELS:-125m:16:1024 1b:4:2048 qwen2_0p5b:8:1024}; do
  IFS=: read -r model batch seq <<< "$spec"
  # shellcheck disable=SC2086  # PERF_ARGS is a word list on purpose
  "$PY" -m bench.benchmarks.throughput --model "$model" --batch "$batch" --seq-len "$seq" --warmup 5 --steps 20 \
    --prompt-len 128 --new-tokens 256 ${PERF_ARGS:-} \
    --json "$OUT/gpu_${tag}_${stamp}_${model}.json" --append-md "$MD" || rc=1
done
"$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider > "$OUT/gpu_${tag}_${stamp}_pytest.txt" 2>&1 || rc=1
tail -n 3 "$OUT/gpu_${tag}_${stamp}_pytest.txt"
exit $rc
