"""Instability detection and policy: every detection is an event, every action is an event.

Per-step detectors (DESIGN.md §7 kinds), fed by the Trainer after each backward:
  nonfinite    NaN/Inf in the loss, the gradient norm, or any block's activations (every step)
  overflow     an FP8 cast saturated more than `overflow_frac` of a tensor (sampled steps)
  underflow    an FP8 cast flushed more than `underflow_frac` of a tensor's non-zeros to 0
  loss_spike   robust z-score of the loss against the last `spike_window` steps above `spike_z`
  grad_spike   the same for the gradient norm
Robust z = (x − median) / (1.4826 · MAD): the median and MAD of a window are not dragged by the
spike itself or by earlier spikes, unlike mean/std, and 1.4826·MAD estimates σ for Gaussian noise.
Spike events carry stat="z": their value is a z-score, not a loss.

Trend detectors (bench/numerics/divergence.py), fed once per recipe step with the logged metrics
(`watch`) and once per eval (`watch_eval`): loss_divergence, grad_divergence, reward_collapse,
entropy_collapse, accuracy_collapse; and eval_regression, an accuracy drop of more than
`eval_margin` below the run's best (always action "log": a wobble worth reading, not a failure).

A recipe says which signals mean something for it: `spikes` (z-score detectors) and `signals`
(trend detectors). In GRPO the policy loss is ~0 by construction (group advantages have zero
mean), so its z-scores are noise divided by noise and its running minimum says nothing; and its
gradient norm is heavy-tailed policy-gradient noise (a healthy default run showed z = 9.7 at step
30). So GRPO runs no spike detector and watches the trends of the gradient norm, reward and
entropy instead (plus nonfinite, overflow/underflow and the recipe's mismatch_spike).

Policy (config `policy.action`): `halt` (status diverged, exit 1; on non-finite values, FP8
overflow/underflow and the trend detectors — a one-step loss/grad spike is logged, not halted on,
since a single clipped spike is routine in a healthy run), `skip_step` (drop this step's
update), `fallback` (switch the offending FP8 module to bf16 and continue; detections not tied to
a module skip the step instead). `log` only records events. A trend cannot be undone by skipping
one step, so under skip_step and fallback the trend detectors log; under halt they halt.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.core.errors import BadInput
from bench.core.events import Emit, Event
from bench.numerics.divergence import DivergenceWatch, Finding

ACTIONS = ("log", "skip_step", "fallback", "halt")
SIGNALS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "reward": "rollout/reward_mean",
           "entropy": "rl/entropy"}


@dataclass
class PolicyConfig:
    """The `policy` config group (conf/policy/*.yaml): see the module docstring for each knob."""
    action: str = "log"
    overflow_frac: float = 1e-3
    underflow_frac: float = 0.5
    zero_block_frac: float = 0.01   # FP4: fraction of a tensor's non-zero blocks flushed whole to 0
    spike_window: int = 50
    spike_z: float = 8.0
    spike_min_history: int = 20
    diverge_window: int = 10
    loss_rise: float = 1.0
    grad_growth: float = 20.0
    acc_drop: float = 0.3
    reward_drop: float = 0.3
    entropy_frac: float = 0.1
    drift_window: int = 10          # mismatch_drift (bench/numerics/drift.py): steps per window
    drift_growth: float = 2.0       # last window's median / first window's above this: drift
    drift_floor_tmpe: float = 0.005  # ... and token_mult_prob_error − 1 at least this (harmless below)
    drift_floor_k3: float = 1e-4    # ... or gen_kl_k3 at least this

    def validate(self) -> str | None:
        """One line naming the first bad value and what is valid, or None."""
        if self.action not in ACTIONS:
            return f"policy.action={self.action!r}; valid: {', '.join(ACTIONS)}"
        for k in ("spike_window", "spike_min_history", "diverge_window", "drift_window"):
            if getattr(self, k) < 1:
                return f"policy.{k}={getattr(self, k)} must be a positive integer; valid: 1, 2, ..."
        if self.spike_min_history > self.spike_window:
            return (f"policy.spike_min_history={self.spike_min_history} exceeds policy.spike_window={self.spike_window}: "
                    f"no spike could ever be detected; valid: 1..{self.spike_window}")
        for k in ("overflow_frac", "underflow_frac", "zero_block_frac", "acc_drop", "reward_drop", "entropy_frac"):
            if not 0 <= getattr(self, k) <= 1:
                return f"policy.{k}={getattr(self, k)} is a fraction; valid: 0..1"
        for k in ("spike_z", "loss_rise"):
            if not getattr(self, k) > 0:
                return f"policy.{k}={getattr(self, k)} must be positive; valid: > 0"
        if not self.drift_growth > 1:
            return f"policy.drift_growth={self.drift_growth} is a ratio of mismatch medians; valid: > 1"
        if not (self.drift_floor_tmpe >= 0 and self.drift_floor_k3 >= 0):
            return "policy.drift_floor_tmpe and policy.drift_floor_k3 must be >= 0"
        if not self.grad_growth > 1:
            return f"policy.grad_growth={self.grad_growth} is a ratio of grad-norm medians; valid: > 1"
        return None


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
    def __init__(self, cfg, emit: Emit, signals: tuple[str, ...] = ("loss", "grad_norm"), eval_margin: float = 0.1,
                 spikes: tuple[str, ...] = ("loss", "grad_norm")):
        """cfg: the `policy` config (attributes of PolicyConfig); emit(Event) writes one events.jsonl
        line; signals: which of SIGNALS this recipe's trend detectors watch; eval_margin: the
        accuracy drop below the run's best that is an eval_regression event; spikes: which of
        loss, grad_norm get a z-score spike detector."""
        if isinstance(cfg, dict):  # callers that name only a few knobs (bench/benchmarks/throughput.py): the rest default
            cfg = PolicyConfig(**cfg)
        if (reason := PolicyConfig.validate(cfg)) is not None:
            raise BadInput(reason)
        unknown = sorted(set(signals) - set(SIGNALS)) + sorted(set(spikes) - {"loss", "grad_norm"})
        if unknown:
            raise ValueError(f"unknown signals {unknown}; valid: {', '.join(SIGNALS)}")
        self.action, self.cfg, self.emit, self.signals, self.spikes = cfg.action, cfg, emit, tuple(signals), tuple(spikes)
        self.loss = SpikeDetector(cfg.spike_window, cfg.spike_z, cfg.spike_min_history)
        self.grad = SpikeDetector(cfg.spike_window, cfg.spike_z, cfg.spike_min_history)
        self.trend = DivergenceWatch(cfg.diverge_window, cfg.loss_rise, cfg.grad_growth, cfg.acc_drop,
                                     cfg.reward_drop, cfg.entropy_frac)
        self.eval_margin = eval_margin
        self.eval_best: dict[str, float] = {}
        self.eval_regressions: list[dict] = []

    def _event(self, step, kind, where, value, threshold, action, decision: Decision, module=None, stat=None):
        self.emit(Event(step, kind, where, value, threshold, action, stat=stat))
        if action == "halt":
            decision.halt = True
        elif action == "skip_step":
            decision.skip = True
        elif action == "fallback":
            if module is None:
                decision.skip = True
            elif module not in decision.fallback:
                decision.fallback.append(module)

    def _close(self, step: int, d: Decision) -> Decision:
        """The policy's own summary event for the step: halt or skip_step."""
        if d.halt:
            self.emit(Event(step, "halt", "policy", 1.0, 0.0, "halt"))
        elif d.skip:
            self.emit(Event(step, "skip_step", "policy", 1.0, 0.0, "skip_step"))
        return d

    def check(self, step: int, loss: float, grad_norm: float | None, nonfinite_acts: int,
              numerics: list[tuple[str, str, str, float]] = ()) -> Decision:
        """One optimizer step's checks. numerics: (kind, module, role, value) detections from the
        monitor's sampled step. grad_norm None: not checked this step (fp16 overflow, handled by
        the loss scaler). Spike detectors run only for the recipe's `spikes`."""
        d = Decision()
        act = self.action
        plain_act = "skip_step" if act == "fallback" else act  # fallback needs a module to act on
        grad_ok = grad_norm is None or math.isfinite(grad_norm)
        if not math.isfinite(loss) or not grad_ok or nonfinite_acts:
            where = "loss" if not math.isfinite(loss) else "grad_norm" if not grad_ok else "activations"
            # value: the count of non-finite activations, or -1 where the scalar itself is NaN/Inf
            self._event(step, "nonfinite", where, nonfinite_acts if where == "activations" else -1, 0, plain_act, d,
                        stat="count" if where == "activations" else None)
        for kind, module, role, value, *stat in numerics:  # an optional 5th item names the stat
            stat = stat[0] if stat else "frac"
            thr = self.cfg.zero_block_frac if stat == "zero_block_frac" else self.threshold(kind)
            self._event(step, kind, f"{module}/{role}", value, thr, act, d, module=module, stat=stat)
        spikes = ((self.loss, "loss_spike", loss if "loss" in self.spikes else None),
                  (self.grad, "grad_spike", grad_norm if "grad_norm" in self.spikes else None))
        for det, name, x in spikes:
            if x is None:
                continue
            z = det.score(x) if math.isfinite(x) else 0.0
            if z > det.z:
                # One step is not a divergence: under halt a spike is logged and the trend
                # detectors decide (a healthy default pretrain run showed a clipped z = 33.6
                # grad spike at step 164); skip_step/fallback still drop the spiky update.
                self._event(step, name, name.split("_")[0], z, det.z, "log" if act == "halt" else plain_act, d,
                            stat="z")
            elif math.isfinite(x):
                det.push(x)  # spikes stay out of the baseline window
        return self._close(step, d)

    def threshold(self, kind: str) -> float:
        """Fraction of a tensor's elements above which an overflow/underflow becomes an event.
        Underflow's default is loose: flushing tiny values to zero is routine for E4M3 grads."""
        return float(self.cfg.overflow_frac if kind == "overflow" else self.cfg.underflow_frac)

    def numerics_detections(self, records: dict) -> list[tuple]:
        """Turn a monitor's per-tensor stats into overflow/underflow detections above threshold.
        FP4 records also carry zero_block_frac: whole blocks flushed to zero (one outlier setting
        the tensor's global scale), an underflow that underflow_frac dilutes over the tensor's
        elements; above policy.zero_block_frac it is an `underflow` detection with stat
        zero_block_frac (a 5-tuple; the others are (kind, module, role, value), stat frac)."""
        out = []
        for (module, role), st in records.items():
            for kind in ("overflow", "underflow"):
                v = st[f"{kind}_frac"]
                if v > self.threshold(kind):
                    out.append((kind, module, role, v))
            z = st.get("zero_block_frac")
            if z is not None and z > self.cfg.zero_block_frac:
                out.append(("underflow", module, role, z, "zero_block_frac"))
        return out

    # --- trends, once per recipe step and per eval --------------------------------------------------
    def _trend_events(self, step: int, findings: list[Finding]) -> Decision:
        d = Decision()
        act = "halt" if self.action == "halt" else "log"
        for f in findings:
            self._event(step, f.kind, f.where, f.value, f.threshold, act, d, stat=f.stat)
        return self._close(step, d)

    def watch(self, step: int, metrics: dict) -> Decision:
        """Feed the step's logged metrics to the trend detectors (only this recipe's signals)."""
        get = {s: metrics.get(SIGNALS[s]) if s in self.signals else None for s in SIGNALS}
        return self._trend_events(step, self.trend.step(get["loss"], get["grad_norm"], get["reward"], get["entropy"]))

    def watch_eval(self, step: int, values: dict) -> Decision:
        """An eval: eval_regression (log only) against the run's best, then the collapse test."""
        for k, v in values.items():
            higher = k.endswith("accuracy")
            best = self.eval_best.get(k)
            # Accuracy only: a relative rise of a near-zero loss is noise, not forgetting
            # (loss regressions across runs are the gate's job).
            if best is not None and higher and best - v > self.eval_margin:
                self.eval_regressions.append({"step": step, "metric": k, "value": v, "best": best, "drop": best - v})
                self.emit(Event(step, "eval_regression", k, v, best, "log", stat="accuracy"))
            if best is None or (v > best if higher else v < best):
                self.eval_best[k] = v
        return self._trend_events(step, self.trend.evaluation(values))

    def state_dict(self):
        return {"loss": self.loss.state_dict(), "grad": self.grad.state_dict(), "trend": self.trend.state_dict(),
                "eval_best": dict(self.eval_best), "eval_regressions": list(self.eval_regressions)}

    def load_state_dict(self, s):
        self.loss.load_state_dict(s["loss"])
        self.grad.load_state_dict(s["grad"])
        if "trend" in s:  # checkpoints written before the trend detectors existed
            self.trend.load_state_dict(s["trend"])
            self.eval_best, self.eval_regressions = dict(s["eval_best"]), list(s["eval_regressions"])
