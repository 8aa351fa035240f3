#!/usr/bin/env bash
# The FP4 positive control (issue 13, docs/findings.md "## FP4 positive control"): bf16/bf16 against
# a bf16 trainer with an NVFP4 W4A4 generator, uncorrected, with TIS and with icepop; then the gate
# against bf16/bf16. Not part of scripts/run.sh's default matrix (keeps that under 10 minutes).
#   scripts/run_fp4_control.sh                       # 3 seeds, 40 steps, the 4 cells below
#   FP4_CELLS=glob(*) scripts/run_fp4_control.sh     # every conf/matrix_fp4 cell (W4A16 too)
# Extra arguments are Hydra overrides for every run (e.g. grpo.temperature=0.5 to change the regime).
# Exits with the gate's code (0 pass, 1 regression, 3 inconclusive).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then scripts/setup.sh; PY=.venv/bin/python; fi
export WANDB_MODE=${WANDB_MODE:-offline}
out=${FP4_OUT:-runs/fp4_control/$(date +%Y%m%d_%H%M%S)}
cells=${FP4_CELLS:-bf16-bf16,bf16-nvfp4,bf16-nvfp4-tis,bf16-nvfp4-icepop}
mkdir -p "$out"

# The shared warm start is trained once, before the parallel jobs race to build it.
$PY -m recipes.grpo steps=1 eval_problems=8 "run_dir=$out/warmup_probe" logger=disabled "$@" >/dev/null
rm -rf "$out/warmup_probe"

$PY -m recipes.grpo -m "+matrix_fp4=$cells" "seed=${FP4_SEEDS:-0,1,2}" "steps=${FP4_STEPS:-40}" \
    "hydra.sweep.dir=$out/runs" hydra/launcher=joblib hydra.launcher.n_jobs=${FP4_JOBS:-2} threads=1 \
    logger.progress=false "$@"

set +e
$PY -m bench.cli gate --baseline "$out/runs/*matrix_fp4=bf16-bf16*" --rules conf/gate/grpo.yaml \
    --markdown "$out/gate.md" "$out/runs" >"$out/gate.txt"
verdict=$?
set -e
# The per-cell table of docs/findings.md (final accuracy, reward and mismatch over the last 5 steps,
# mean ± std over seeds, two-sided Welch p against bf16-bf16) -> $out/table.json
$PY - "$out" >"$out/table.json" <<'PYEOF'
"""Per-cell table from a run_fp4_control.sh output dir: final eval accuracy, reward mean of the last
5 steps, token_mult_prob_error mean of the last 5, as mean ± std over seeds, plus Welch p vs bf16-bf16."""
import glob, json, re, statistics as st, sys
from scipy import stats as ss
root = sys.argv[1]
cells = {}
for d in sorted(glob.glob(f"{root}/runs/*matrix_fp4=*")):
    cell = re.search(r"matrix_fp4=([^,]+)", d).group(1); seed = int(re.search(r"seed=(\d+)", d).group(1))
    ev = [json.loads(l) for l in open(f"{d}/evals.jsonl")]
    acc = [v for k, v in ev[-1].items() if k.endswith("/accuracy")][0]
    m = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    m = [r for r in m if "rollout/reward_mean" in r][-5:]
    rew = sum(r["rollout/reward_mean"] for r in m) / len(m)
    mm = [r["mismatch/token_mult_prob_error"] for r in m if "mismatch/token_mult_prob_error" in r]
    cells.setdefault(cell, []).append({"seed": seed, "final_accuracy": acc, "reward_last5": rew,
                                       "token_mult_prob_error_last5": sum(mm) / len(mm)})
out = {"cells": cells, "summary": {}}
base = cells.get("bf16-bf16")
for c, rows in cells.items():
    s = {}
    for k in ("final_accuracy", "reward_last5", "token_mult_prob_error_last5"):
        v = [r[k] for r in rows]
        s[k] = {"mean": st.mean(v), "std": st.stdev(v) if len(v) > 1 else 0.0}
        if base and c != "bf16-bf16" and k != "token_mult_prob_error_last5":
            s[k]["welch_p_two_sided"] = float(ss.ttest_ind(v, [r[k] for r in base], equal_var=False).pvalue)
    out["summary"][c] = s
print(json.dumps(out, indent=1))
PYEOF
tail -n 20 "$out/gate.txt"
echo "gate: $out/gate.md  exit code: $verdict (0 pass, 1 regression, 3 inconclusive)"
exit $verdict
