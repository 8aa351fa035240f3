# Sourced by the thin wrappers (scripts/fp8bench, scripts/pretrain, scripts/grpo): pick the
# interpreter and make this checkout's code the one that runs, from any working directory.
#   FP8BENCH_PYTHON=/path/to/python  use that interpreter as is (a conda env, CI's own venv);
#   otherwise scripts/setup.sh makes sure .venv exists (idempotent, quiet when up to date).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${FP8BENCH_PYTHON:-}" ]; then
  PY=$FP8BENCH_PYTHON
else
  "$ROOT/scripts/setup.sh" >&2
  VENV=${FP8BENCH_VENV:-.venv}
  case "$VENV" in /*) PY=$VENV/bin/python ;; *) PY=$ROOT/$VENV/bin/python ;; esac
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
