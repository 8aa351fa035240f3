#!/usr/bin/env bash
# The test suite on CPU (GPU-marked tests skip without CUDA). Sets up .venv first if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_MODE=disabled
exec .venv/bin/python -m pytest -q "$@"
