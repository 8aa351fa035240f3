"""Median over steps per run (and step 0 alone), then median over seeds, of tmpe and gen_kl_k3 per cell; the ablation tables."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
cells = {}
for cell in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "attribute"):
    per_seed = []
    for run in sorted(cell.iterdir()):
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        rows = [r for r in rows if "mismatch/token_mult_prob_error" in r]
        per_seed.append({"run": run.name,
                         "tmpe_median": statistics.median(r["mismatch/token_mult_prob_error"] for r in rows),
                         "gen_kl_k3_median": statistics.median(r["mismatch/gen_kl_k3"] for r in rows),
                         "tmpe_step0": rows[0]["mismatch/token_mult_prob_error"],
                         "gen_kl_k3_step0": rows[0]["mismatch/gen_kl_k3"],
                         "step_time_s_median": statistics.median(r["train/step_time_s"] for r in rows)})
    cells[cell.name] = {"seeds": per_seed,
                        "tmpe_median": statistics.median(s["tmpe_median"] for s in per_seed),
                        "gen_kl_k3_median": statistics.median(s["gen_kl_k3_median"] for s in per_seed),
                        # step 0: every cell samples the same warm-started policy on the same prompts
                        "tmpe_step0_median": statistics.median(s["tmpe_step0"] for s in per_seed),
                        "gen_kl_k3_step0_median": statistics.median(s["gen_kl_k3_step0"] for s in per_seed)}
abl = {}
for d in sorted((out / "attribute").glob("*")) if (out / "attribute").is_dir() else []:
    r = json.loads((d / "attribution.json").read_text())
    abl[d.name] = {"mismatch": r["mismatch"], "first_divergent": r["first_divergent"], "all": r["ablation"]["all"],
                   "none": r["ablation"]["none"],
                   "rows": [{k: x[k] for k in ("source", "share", "alone", "all_but")} for x in r["ablation"]["rows"]]}
print(json.dumps({"cells": cells, "ablation": abl}, indent=1))
