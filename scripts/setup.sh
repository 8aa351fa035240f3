#!/usr/bin/env bash
# Idempotent set-up: creates .venv and installs fp8bench (editable, dev extra).
# On a machine without an NVIDIA GPU it pins the CPU build of torch first, so that resolving
# the project's `torch` requirement never pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FP8BENCH_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.fp8bench-installed"
# Re-install only when the project's requirements changed since the last set-up.
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "torch>=2.7"            # the default PyPI wheel is the CUDA build
  else
    # CPU-only machine: take a CPU build. On the project's machines torch==2.13.0 resolves to a
    # local CPU wheel; elsewhere set FP8BENCH_TORCH to a CPU wheel/spec of your own (or pre-install
    # torch into the venv), so the project's `torch` requirement is already satisfied.
    pip install "${FP8BENCH_TORCH:-torch==2.13.0}"
  fi
fi
pip install -e ".[dev]"
echo "$want" > "$stamp"
echo "fp8bench: environment ready in $VENV"
