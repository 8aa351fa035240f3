"""Attribution overhead from one GRPO run with attribution.interval=2: attributed and plain steps
alternate in one process (round-robin), so contention and warm-up hit both alike. Step 0 (warm-up)
is dropped. Overhead at interval N = (median attributed − median plain) / N / median plain."""
import json
import statistics
import sys

out = {}
for run in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")][1:]
    att = [r["train/step_time_s"] for r in rows if "attrib/logits/rel_diff" in r]
    plain = [r["train/step_time_s"] for r in rows if "attrib/logits/rel_diff" not in r]
    ma, mp = statistics.median(att), statistics.median(plain)
    out[run] = {"attributed_steps": len(att), "plain_steps": len(plain), "median_attributed_s": ma,
                "median_plain_s": mp, "extra_per_attributed_step_s": ma - mp,
                "overhead_at_interval_10": (ma - mp) / 10 / mp, "overhead_at_interval_1": (ma - mp) / mp}
print(json.dumps(out, indent=1))
