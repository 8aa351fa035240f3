#!/usr/bin/env bash
# The main job: the GRPO precision matrix on the tiny task (bf16/bf16, bf16 + fp8 generator with
# and without TIS, fp8/fp8 with and without TIS), then `fp8bench compare` and `fp8bench gate`
# against the bf16/bf16 cell. Extra arguments are Hydra overrides for every cell (e.g. steps=50).
# Writes runs/matrix/<stamp>/{report.md,report.html,*.png,gate.xml,gate.md} and the run dirs
# under runs/matrix/<stamp>/runs/. Exits 0 when the matrix ran (the verdict is the finding, printed
# at the end); set FP8BENCH_STRICT=1 to exit with the gate's code instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
py=.venv/bin/python
out=runs/matrix/$(date +%Y%m%d_%H%M%S)
mkdir -p "$out"

# The shared warm start is trained once, before the parallel jobs race to build it.
$py -m recipes.grpo steps=1 eval_problems=8 "run_dir=$out/warmup_probe" logger=disabled "$@" >/dev/null
rm -rf "$out/warmup_probe"

# Two single-threaded jobs at a time: the tiny model does not scale past one core per job.
$py -m recipes.grpo -m '+matrix=glob(*)' "hydra.sweep.dir=$out/runs" hydra/launcher=joblib \
    hydra.launcher.n_jobs=${FP8BENCH_JOBS:-2} threads=1 logger.progress=false "$@"

$py -m bench.cli compare "$out/runs" -o "$out"
set +e
$py -m bench.cli gate --baseline "$(ls -d "$out"/runs/*matrix=bf16-bf16*)" --rules conf/gate/grpo.yaml \
    --junit "$out/gate.xml" --markdown "$out/gate.md" "$out/runs"
verdict=$?
set -e
echo
echo "report: $out/report.md  (html: $out/report.html)   gate: $out/gate.md  junit: $out/gate.xml"
echo "gate exit code: $verdict (0 pass, 1 regression vs bf16/bf16)"
if [ "${FP8BENCH_STRICT:-0}" = 1 ]; then exit $verdict; fi
