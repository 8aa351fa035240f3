#!/usr/bin/env bash
# The main job: the GRPO precision matrix on the tiny task (bf16/bf16, fp16/fp16, bf16 + fp8
# generator with and without TIS, fp8/fp8 with and without TIS), the generator computing as an
# inference engine does (generator/kernels=inference, the GRPO default: DESIGN.md section 11), 5 seeds
# per cell, then `fp8bench gate` and `fp8bench compare` against the bf16/bf16 cell. Extra arguments
# are Hydra overrides for every cell (e.g. steps=80 or seed=0,1,2,3,4); FP8BENCH_SEEDS (default
# 0,1,2,3,4) and FP8BENCH_STEPS (default 30) set the defaults that an explicit seed=/steps= replaces.
#
# Why 5 seeds x 30 steps: fp16 GEMMs have no native CPU path (a 1152x128x384 fp16 GEMM takes
# 58 ms on a 2-core host against 1.7 ms in bf16), so an fp16/fp16 GRPO step costs several times a
# bf16 one, and the inference kernels (split-K, split-KV loops) add to every generator step.
# Measured on the 2-core host: 6 cells x 3 seeds x 30 steps took 2m55s end to end with two jobs,
# so 5 seeds x 30 steps is ~5 minutes, inside the 10-minute budget, and the gate's non-inferiority
# interval shrinks (half-width ~0.024 at sd ~0.02 against ~0.035 with 3 seeds). The trade-off:
# 30 RL steps (not 60-80), so accuracy moves little within a run; what the matrix compares is
# each cell against bf16/bf16 from the same warm start, not how much RL learns.
#
# Writes runs/matrix/<stamp>/{report.md,report.html,*.png,gate.xml,gate.md,gate.txt} and the run
# dirs under runs/matrix/<stamp>/runs/. The last lines printed are the verdict per variant.
# Exits 0 when the matrix ran (the verdict is the finding); set FP8BENCH_STRICT=1 to exit with
# the gate's code instead (0 pass, 1 regression, 3 inconclusive).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
py=.venv/bin/python
out=runs/matrix/$(date +%Y%m%d_%H%M%S)
mkdir -p "$out"

defaults=()
case " $* " in *" seed="*) ;; *) defaults+=("seed=${FP8BENCH_SEEDS:-0,1,2,3,4}") ;; esac
case " $* " in *" steps="*) ;; *) defaults+=("steps=${FP8BENCH_STEPS:-30}") ;; esac

# The shared warm start is trained once, before the parallel jobs race to build it.
$py -m recipes.grpo steps=1 eval_problems=8 "run_dir=$out/warmup_probe" logger=disabled "$@" >/dev/null
rm -rf "$out/warmup_probe"

# Two single-threaded jobs at a time: the tiny model does not scale past one core per job.
$py -m recipes.grpo -m '+matrix=glob(*)' "${defaults[@]}" "hydra.sweep.dir=$out/runs" hydra/launcher=joblib \
    hydra.launcher.n_jobs=${FP8BENCH_JOBS:-2} threads=1 logger.progress=false "$@"

# The gate's wide table goes to gate.txt (gate.md has it too); the console ends with the verdict.
set +e
$py -m bench.cli gate --baseline "$out/runs/*matrix=bf16-bf16*" --rules conf/gate/grpo.yaml \
    --junit "$out/gate.xml" --markdown "$out/gate.md" "$out/runs" >"$out/gate.txt"
verdict=$?
set -e
echo
echo "report: $out/report.md  (html: $out/report.html)   gate: $out/gate.md  junit: $out/gate.xml"
echo "gate exit code: $verdict (0 pass, 1 regression, 2 bad input, 3 inconclusive: too few seeds)"
$py -m bench.cli compare "$out/runs" -o "$out"
if [ "${FP8BENCH_STRICT:-0}" = 1 ]; then exit $verdict; fi
