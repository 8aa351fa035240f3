"""What a precision saves, next to what it costs: per-run time/energy figures and a variant's
change against the baseline, for the compare report and its verdict (issue 18, item 3).

    base, fp8 = run_cost(base_run.metrics, base_run.summary), run_cost(run.metrics, run.summary)
    cost_line("bf16/fp8_blockwise", cost_delta(base, fp8), accuracy_delta=-0.01)
    # 'bf16/fp8_blockwise: rollout -31.0%, step -18.2%, tokens/s +22.2%, energy/token -15.0%, accuracy -0.010'

Reads metrics.jsonl rows (DESIGN §4) and summary.json only; imports neither torch nor numpy.

Which steps. On an asynchronous device only steps with `time/synced` = 1 split the step honestly
(bench/perf/timing.py), so the phase figures are means over those; rows without the key (older runs)
count as synced. The first `skip` logged steps are left out (allocator growth, lazy init,
compile). Means, not medians: phase means add up to the mean step, and the eval and checkpoint
steps a schedule contains are part of what the run costs (compare runs of the same schedule).
Energy per token is summary.json's total (joules over the steps / tokens) when recorded, else the
mean of the per-step values; None when the run had no energy counter.
"""
from __future__ import annotations

from statistics import fmean

from bench.perf.timing import PHASES

ROLLOUT = ("rollout_prefill", "rollout_decode")


def run_cost(metrics: list[dict], summary: dict | None = None, skip: int = 1) -> dict:
    """{"step_s", "phase_s": {phase: mean s}, "rollout_s", "tokens_per_s", "j_per_token",
    "steps"} over the run's synced steps after the first `skip` (None where nothing was logged)."""
    rows = [r for r in metrics if "time/other_s" in r or "train/step_time_s" in r][skip:]
    timed = [r for r in rows if "time/other_s" in r and r.get("time/synced", 1.0) == 1.0]
    phase_s = {p: fmean(r[f"time/{p}_s"] for r in timed) for p in PHASES} if timed else {}
    step = sum(phase_s.values()) if timed else _mean(rows, "train/step_time_s")
    energy = (summary or {}).get("energy") or {}
    jpt = energy.get("j_per_token") if energy.get("source") else _mean(rows, "energy/j_per_token")
    return {"steps": len(timed) if timed else len(rows), "step_s": step, "phase_s": phase_s,
            "rollout_s": sum(phase_s[p] for p in ROLLOUT) if timed else None,
            "tokens_per_s": _mean(rows, "train/tokens_per_s"), "j_per_token": jpt}


def variant_cost(costs: list[dict]) -> dict:
    """A variant's figures over its runs (seeds): the mean of each run's figure, over the runs that
    measured it (None when none did). Equal weight per seed: each seed is one sample of the cost."""
    def avg(vals):
        vals = [v for v in vals if v is not None]
        return fmean(vals) if vals else None

    timed = [c for c in costs if c["phase_s"]]
    return {"steps": sum(c["steps"] for c in costs), "runs": len(costs),
            "step_s": avg(c["step_s"] for c in costs),
            "phase_s": {p: fmean(c["phase_s"][p] for c in timed) for p in PHASES} if timed else {},
            "rollout_s": avg(c["rollout_s"] for c in costs), "tokens_per_s": avg(c["tokens_per_s"] for c in costs),
            "j_per_token": avg(c["j_per_token"] for c in costs)}


def measured(delta: dict) -> bool:
    """Whether a cost delta holds any figure (a run without timing or energy has none)."""
    return any(delta[k] is not None for k in ("rollout", "step", "tokens_per_s", "j_per_token"))


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return fmean(vals) if vals else None


def _rel(new: float | None, old: float | None) -> float | None:
    """new / old - 1 (-0.2: 20% less), or None when either side is missing or old is 0."""
    return None if new is None or not old else new / old - 1.0


def cost_delta(base: dict, var: dict) -> dict:
    """Relative change of the variant against the baseline, per figure and per phase."""
    return {"step": _rel(var["step_s"], base["step_s"]), "rollout": _rel(var["rollout_s"], base["rollout_s"]),
            "tokens_per_s": _rel(var["tokens_per_s"], base["tokens_per_s"]),
            "j_per_token": _rel(var["j_per_token"], base["j_per_token"]),
            "phases": {p: _rel(var["phase_s"].get(p), base["phase_s"].get(p)) for p in PHASES}}


def cost_line(label: str, delta: dict, accuracy_delta: float | None = None) -> str:
    """One verdict line: the saving (rollout, step, throughput, energy) beside the accuracy change.
    A figure that was not measured on either side is left out, never shown as 0."""
    return f"{label}: " + (saving(delta, accuracy_delta) if measured(delta) else "no time or energy measured")


def saving(delta: dict, accuracy_delta: float | None = None) -> str:
    """The figures of `cost_line` without its label: 'rollout -31.0%, step -18.2%, ...'."""
    parts = [f"{name} {delta[key] * 100:+.1f}%" for name, key in
             (("rollout", "rollout"), ("step", "step"), ("tokens/s", "tokens_per_s"), ("energy/token", "j_per_token"))
             if delta[key] is not None]
    if accuracy_delta is not None:
        parts.append(f"accuracy {accuracy_delta:+.3f}")
    return ", ".join(parts)


def split_table(costs: dict[str, dict]) -> str:
    """Markdown table: one row per variant, mean step time and each phase's share of it."""
    shown = [p for p in PHASES if any(c["phase_s"].get(p) for c in costs.values())]
    head = "| variant | step ms | " + " | ".join(shown) + " |"
    lines = [head, "|" + "---|" * (len(shown) + 2)]
    for label, c in costs.items():
        step = c["step_s"]
        cells = [f"{c['phase_s'][p] / step:.1%}" if c["phase_s"] and step else "n/a" for p in shown]
        lines.append(f"| {label} | {f'{step * 1e3:.1f}' if step else 'n/a'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
