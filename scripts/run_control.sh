#!/usr/bin/env bash
# The accuracy/reward positive control (issue 25, docs/findings.md "## What disagreement costs"):
# bf16/bf16 against the same bf16 generator with a SYNTHETIC logit perturbation (generator.perturb,
# conf/matrix_control/), uncorrected and with TIS; then `fp8bench gate` against bf16/bf16, which
# exits 1 through the reward (or accuracy) rule, not only the mismatch bound. Not part of run.sh.
#   scripts/run_control.sh                                    # bf16-bf16, perturb3.0 (+tis): 3 seeds, 20 steps
#   CONTROL_CELLS='glob(*)' scripts/run_control.sh            # the whole dose ladder (sigma 0.3, 1, 3)
#   CONTROL_SEEDS=0,1 CONTROL_STEPS=6 scripts/run_control.sh eval_problems=32   # the test's short version
# Extra arguments are Hydra overrides for every run. Exits with the gate's code (0, 1, 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then scripts/setup.sh; PY=.venv/bin/python; fi
export WANDB_MODE=${WANDB_MODE:-offline}
out=${CONTROL_OUT:-runs/control/$(date +%Y%m%d_%H%M%S)}
cells=${CONTROL_CELLS:-bf16-bf16,perturb3.0,perturb3.0-tis}
mkdir -p "$out"

# The shared warm start is trained once, before the parallel jobs race to build it.
$PY -m recipes.grpo steps=1 eval_problems=8 "run_dir=$out/warmup_probe" logger=disabled "$@" >/dev/null
rm -rf "$out/warmup_probe"

$PY -m recipes.grpo -m "+matrix_control=$cells" "seed=${CONTROL_SEEDS:-0,1,2}" "steps=${CONTROL_STEPS:-20}" \
    "eval_every=${CONTROL_STEPS:-20}" "hydra.sweep.dir=$out/runs" hydra/launcher=joblib \
    hydra.launcher.n_jobs=${CONTROL_JOBS:-2} threads=1 logger.progress=false "$@"

set +e
$PY -m bench.cli gate --baseline "$out/runs/*matrix_control=bf16-bf16*" --rules conf/gate/grpo.yaml \
    --markdown "$out/gate.md" "$out/runs" >"$out/gate.txt"
verdict=$?
$PY -m bench.cli compare "$out/runs" -o "$out/report" >/dev/null
set -e
cat "$out/gate.txt"
exit $verdict
