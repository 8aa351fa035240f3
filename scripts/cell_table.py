"""Per-cell, per-seed table of a matrix sweep dir (issue 25, docs/findings.md "What disagreement costs"):
final eval accuracy (and partial score where logged), rollout reward / tmpe / gen_kl_k3 over the last 5
steps, their growth (bench/numerics/drift.py, window 10), mismatch_drift events; mean, std and a
two-sided paired-by-seed t-test and the 95% CI of the mean paired difference against the baseline cell.
    python scripts/cell_table.py SWEEP_DIR/runs MATRIX_GROUP BASE_CELL > table.json
"""
import glob, json, re, statistics as st, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy import stats as ss

from bench.numerics.drift import series_growth

root, group, base = sys.argv[1:4]
cells = {}
for d in sorted(glob.glob(f"{root}/*{group}=*")):
    cell = re.search(rf"{group}=([^,]+)", d).group(1)
    seed = int(re.search(r"seed=(\d+)", d).group(1))
    evals = [json.loads(line) for line in open(f"{d}/evals.jsonl")]
    ev = evals[-1]
    m = [json.loads(line) for line in open(f"{d}/metrics.jsonl")]
    events = [json.loads(line) for line in open(f"{d}/events.jsonl")]
    last = m[-5:]
    row = {"seed": seed, "final_accuracy": [v for k, v in ev.items() if k.endswith("/accuracy")][0]}
    row.update({f"final_{k.rsplit('/', 1)[1]}": v for k, v in ev.items() if k.endswith("/partial")})
    for k, name in (("rollout/reward_mean", "reward_last5"), ("mismatch/token_mult_prob_error", "tmpe_last5"),
                    ("mismatch/gen_kl_k3", "gen_kl_k3_last5"), ("mismatch/chi2_seq", "chi2_seq_last5"),
                    ("mismatch/seq_mult_prob_error_mean", "seq_mult_prob_error_last5"),
                    ("rollout/response_len_mean", "response_len_last5")):
        row[name] = st.mean(r[k] for r in last) if all(k in r for r in last) else float("nan")
    # Trajectories (lists: kept per seed, left out of the summary's means)
    row["accuracy_by_eval"] = [[e["step"], [v for k, v in e.items() if k.endswith("/accuracy")][0]] for e in evals]
    row["reward_by_10_steps"] = [st.mean(r["rollout/reward_mean"] for r in m[i:i + 10]) for i in range(0, len(m), 10)]
    for k in ("token_mult_prob_error", "gen_kl_k3"):
        row[f"{k}_growth_w10"] = series_growth([r[f"mismatch/{k}"] for r in m], k, 10)
    row["mismatch_drift_events"] = sum(e["kind"] == "mismatch_drift" for e in events)
    cells.setdefault(cell, []).append(row)
out = {"cells": cells, "summary": {}}
for c, rows in cells.items():
    s = {}
    for k in rows[0]:
        if k == "seed" or isinstance(rows[0][k], list):
            continue
        v = [r[k] for r in rows if r[k] == r[k]]  # growth is NaN below two windows of steps
        if not v:
            continue
        s[k] = {"mean": st.mean(v), "std": st.stdev(v) if len(v) > 1 else 0.0}
        if c != base and k in ("final_accuracy", "reward_last5", "final_partial"):
            b = {r["seed"]: r[k] for r in cells[base]}
            pairs = [(r[k], b[r["seed"]]) for r in rows if r["seed"] in b]
            if len(pairs) > 1:
                d = [x - y for x, y in pairs]
                s[k]["delta_mean"] = st.mean(d)
                half = ss.t.ppf(0.975, len(d) - 1) * st.stdev(d) / len(d) ** 0.5  # paired 95% CI of the mean Δ
                s[k]["delta_ci95"] = [st.mean(d) - half, st.mean(d) + half]
                s[k]["paired_p_two_sided"] = float(ss.ttest_rel(*zip(*pairs)).pvalue)
    out["summary"][c] = s
print(json.dumps(out, indent=1, default=float))
