"""Events (DESIGN.md §7): one type, one list of kinds, one way to emit.

An event is one events.jsonl line: `{"step", "kind", "where", "value", "threshold", "action"}`,
plus `stat` (what `value` measures, e.g. "z" for a z-score or "loss/min" for a ratio, so a
z-score of 2141 is never read as a loss of 2141) and `opt_step` (the optimizer step, where it
differs from the recipe's step: GRPO runs several optimizer steps per rollout step). Every
component takes an `Emit` callable; the session's `emit` writes the line and flushes it.

Imports nothing heavy: the report tools read these names without torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

# Order is the report's order. The first block is DESIGN.md §7; the divergence kinds are the
# sustained-failure detectors (issue 12): a spike is one step, a divergence is a trend.
KINDS = (
    "overflow", "underflow", "nonfinite", "loss_spike", "grad_spike", "mismatch_spike",
    "skip_step", "fallback", "eval_regression", "halt", "preempt", "resume",
    "loss_divergence", "grad_divergence", "accuracy_collapse", "reward_collapse", "entropy_collapse",
    "lock_takeover", "mismatch_drift", "metrics_row_lost",
)
ACTIONS = ("log", "halt", "skip_step", "fallback", "checkpoint_and_exit", "resume", "take_over")


@dataclass(frozen=True)
class Event:
    step: int
    kind: str
    where: str
    value: float
    threshold: float
    action: str = "log"
    stat: str | None = None      # what `value` is: "z", "frac", "ratio_to_min", ... (None: the raw value)
    opt_step: int | None = None  # optimizer step, when it differs from `step`

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; valid: {', '.join(KINDS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step"], d["value"], d["threshold"] = int(self.step), float(self.value), float(self.threshold)
        return {k: v for k, v in d.items() if v is not None}


Emit = Callable[[Event], None]
