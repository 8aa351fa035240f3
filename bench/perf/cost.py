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

import re
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


# --- where the figures come from: hardware that executes the precision, or emulation -----------
# The compute capability a recipe's GEMMs need to run as that precision (FP8 tensor cores: Ada and
# Hopper, sm89+; MX block scaling: Blackwell, sm100). FP4 GEMMs are not wired (README, FP4), so an
# FP4 recipe is emulated on every device. High-precision recipes run natively on any CUDA device.
_NEEDS = {"fp8_delayed": (8, 9), "fp8_tensorwise": (8, 9), "fp8_rowwise": (8, 9), "fp8_blockwise": (8, 9),
          "mxfp8": (10, 0), "nvfp4": None, "mxfp4": None}
# summary.json names a CUDA device by torch.cuda.get_device_name only: the capability by family.
_FAMILIES = ((re.compile(r"\b(B100|B200|GB200|B300|GB300|RTX PRO 6000 Blackwell|RTX 50\d\d)\b"), (10, 0)),
             (re.compile(r"\b(H100|H200|H800|H20|GH200)\b"), (9, 0)),
             (re.compile(r"\b(L4|L40S?|RTX 40\d\d|RTX \d000 Ada|Ada)\b"), (8, 9)))


def capability(summary: dict | None) -> tuple[int, int] | None:
    """The CUDA compute capability of the run's device: summary.json's `device_capability` where a
    run records it, else from the device name's family; None on CPU or an unknown name."""
    s = summary or {}
    if s.get("device_capability"):
        return tuple(s["device_capability"])[:2]
    dev = str(s.get("device") or "")
    if not dev or dev.startswith("cpu"):
        return None
    return next((cap for pat, cap in _FAMILIES if pat.search(dev)), None)


def executed_natively(summary: dict | None) -> bool:
    """Whether every precision side of the run ran on hardware that executes that precision: a
    CUDA device whose capability the recipe needs. On CPU everything low-precision (FP8, FP4 and
    fp16 GEMMs, and bf16 without AVX512-BF16/AMX) is emulated, so its time is emulation's."""
    s = summary or {}
    dev = str(s.get("device") or "")
    if not dev or dev.startswith("cpu"):
        return False
    cap, sides = capability(s), (s.get("precision") or {}).values()
    if not sides:  # no record of what ran: no claim that it ran natively
        return False
    for side in sides:
        name = side.get("recipe") if isinstance(side, dict) else None
        if name in _NEEDS and (_NEEDS[name] is None or cap is None or cap < _NEEDS[name]):
            return False
    return True


def labelled(delta: dict, native: bool, accuracy_delta: float | None = None) -> str:
    """`saving` where the precisions ran on hardware that executes them; elsewhere the same figures
    named for what they are: what emulating the precision costs on this host, not what it saves."""
    figures = saving(delta, accuracy_delta)
    return figures if native else f"emulation on this host, not a precision saving: {figures}"


EMULATION_NOTE = ("Time and energy were measured where the precisions are emulated (a CPU, or a GPU "
                  "without the FP8/FP4 units the recipe needs): the cost column is what emulating them costs "
                  "on this host, not what the precision saves on hardware that executes it.")
