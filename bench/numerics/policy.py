"""Instability detection and policy: every detection is an event, every action is an event.

Detectors (DESIGN.md §7 kinds):
  nonfinite    NaN/Inf in the loss, the gradient norm, or any block's activations (every step)
  overflow     an FP8 cast saturated more than `overflow_frac` of a tensor (sampled steps)
  underflow    an FP8 cast flushed more than `underflow_frac` of a tensor's non-zeros to 0
  loss_spike   robust z-score of the loss against the last `window` steps above `z`
  grad_spike   the same for the gradient norm
Robust z = (x − median) / (1.4826 · MAD): the median and MAD of a window are not dragged by the
spike itself or by earlier spikes, unlike mean/std, and 1.4826·MAD estimates σ for Gaussian noise.

Policy (config `policy.action`): `halt` (status diverged, exit 1), `skip_step` (drop this step's
update), `fallback` (switch the offending FP8 module to bf16 and continue; detections not tied to
a module skip the step instead). `log` only records events.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.errors import BadInput

ACTIONS = ("log", "skip_step", "fallback", "halt")


class SpikeDetector:
    def __init__(self, window: int, z: float, min_history: int):
        self.values: deque[float] = deque(maxlen=window)
        self.z, self.min_history = z, min_history

    def score(self, x: float) -> float:
        """Robust z-score of x against the window (0 until enough history)."""
        if len(self.values) < self.min_history:
            return 0.0
        vals = sorted(self.values)
        med = vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] + vals[len(vals) // 2])
        dev = sorted(abs(v - med) for v in vals)
        mad = dev[len(dev) // 2]
        return (x - med) / (1.4826 * mad + 1e-12 + 1e-6 * abs(med))

    def push(self, x: float) -> None:
        if math.isfinite(x):
            self.values.append(x)

    def state_dict(self):
        return {"values": list(self.values)}

    def load_state_dict(self, s):
        self.values.clear()
        self.values.extend(s["values"])


@dataclass
class Decision:
    skip: bool = False
    halt: bool = False
    fallback: list[str] = field(default_factory=list)


class InstabilityPolicy:
    def __init__(self, cfg, emit):
        """cfg: the `policy` config; emit(event_dict) writes one events.jsonl line."""
        self.action = cfg.get("action", "log")
        if self.action not in ACTIONS:
            raise BadInput(f"policy.action={self.action!r}; valid: {', '.join(ACTIONS)}")
        self.cfg, self.emit = cfg, emit
        w, z, m = int(cfg.get("spike_window", 50)), float(cfg.get("spike_z", 8.0)), int(cfg.get("spike_min_history", 20))
        self.loss = SpikeDetector(w, z, m)
        self.grad = SpikeDetector(w, z, m)

    def _event(self, step, kind, where, value, threshold, action, decision: Decision, module=None):
        self.emit({"step": step, "kind": kind, "where": where, "value": float(value),
                   "threshold": float(threshold), "action": action})
        if action == "halt":
            decision.halt = True
        elif action == "skip_step":
            decision.skip = True
        elif action == "fallback":
            if module is None:
                decision.skip = True
            elif module not in decision.fallback:
                decision.fallback.append(module)

    def check(self, step: int, loss: float, grad_norm: float | None, nonfinite_acts: int,
              numerics: list[tuple[str, str, str, float]] = ()) -> Decision:
        """numerics: (kind, module, role, value) detections from the monitor's sampled step.
        grad_norm None: not checked this step (fp16 overflow, handled by the loss scaler)."""
        d = Decision()
        act = self.action
        module_act = act  # fallback applies to module-attributed detections
        plain_act = "skip_step" if act == "fallback" else act
        grad_ok = grad_norm is None or math.isfinite(grad_norm)
        if not math.isfinite(loss) or not grad_ok or nonfinite_acts:
            where = "loss" if not math.isfinite(loss) else "grad_norm" if not grad_ok else "activations"
            # value: the count of non-finite activations, or -1 where the scalar itself is NaN/Inf
            self._event(step, "nonfinite", where, nonfinite_acts if where == "activations" else -1, 0, plain_act, d)
        for kind, module, role, value in numerics:
            self._event(step, kind, f"{module}/{role}", value, self.threshold(kind), module_act, d, module=module)
        for det, name, x in ((self.loss, "loss_spike", loss), (self.grad, "grad_spike", grad_norm)):
            if x is None:
                continue
            z = det.score(x) if math.isfinite(x) else 0.0
            if z > det.z:
                self._event(step, name, name.split("_")[0], z, det.z, plain_act, d)
            elif math.isfinite(x):
                det.push(x)  # spikes stay out of the baseline window
        if d.halt:
            self.emit({"step": step, "kind": "halt", "where": "policy", "value": 1.0, "threshold": 0.0, "action": "halt"})
        elif d.skip:
            self.emit({"step": step, "kind": "skip_step", "where": "policy", "value": 1.0, "threshold": 0.0,
                       "action": "skip_step"})
        return d

    def threshold(self, kind: str) -> float:
        """Fraction of a tensor's elements above which an overflow/underflow becomes an event.
        Underflow's default is loose: flushing tiny values to zero is routine for E4M3 grads."""
        return float(self.cfg.get(f"{kind}_frac", 1e-3 if kind == "overflow" else 0.5))

    def numerics_detections(self, records: dict) -> list[tuple[str, str, str, float]]:
        """Turn a monitor's per-tensor stats into overflow/underflow detections above threshold."""
        out = []
        for (module, role), st in records.items():
            for kind in ("overflow", "underflow"):
                v = st[f"{kind}_frac"]
                if v > self.threshold(kind):
                    out.append((kind, module, role, v))
        return out

    def state_dict(self):
        return {"loss": self.loss.state_dict(), "grad": self.grad.state_dict()}

    def load_state_dict(self, s):
        self.loss.load_state_dict(s["loss"])
        self.grad.load_state_dict(s["grad"])
