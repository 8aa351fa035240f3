"""Trend detectors: a run that is going wrong for many steps, not one step that looks odd.

A spike detector (bench/numerics/policy.py) asks "is this step an outlier against the last few?".
A divergence is a sustained trend, and its first steps are often not outliers at all: the loss
climbs a little every step (each step's z-score is small, and the window's median climbs with it),
or the policy collapses onto one answer within two updates (the reward is 0 from then on, which
is perfectly "normal" against a window of zeros). Each detector here compares a signal with the
run's own start and best, over `window` steps, and reports a named event whose `stat` says what
`value` measures:

  loss_divergence    value = loss − min(loss so far) in nats (stat "loss-min"), above `loss_rise`
                     for `window` consecutive steps. A difference, not a ratio: near a converged
                     loss of 0.02 a ratio of 3 is noise, and 1 nat above the best means the model
                     gives the data e^1 ≈ 2.7x less probability than it did.
  grad_divergence    value = median(last window of grad norms) / min over earlier window medians
                     (stat "median/min_median"), above `grad_growth`. Medians: clipping-era grad
                     norms are heavy-tailed and one large step is the spike detector's business.
  accuracy_collapse  per eval metric ending in "accuracy": value = best − acc (stat "best-acc")
                     above `acc_drop`, and acc also below the run's first eval (the run has lost
                     more than it ever gained, so it is not a wobble around a plateau).
  reward_collapse    the same test on the mean reward of the last `window` rollout steps, against
                     the best full-window mean and the first step's mean reward (stat "best-mean").
  entropy_collapse   mean token entropy of the last `window` steps below `entropy_frac` x the
                     first step's entropy (stat "mean/start") while the reward window mean is
                     not above its start: sharpening that bought reward is learning; sharpening
                     that did not is mode collapse.

A detector fires once per episode (it re-arms when its condition clears), so a diverging run gets
one event per kind, not one per step. Every input is a plain float; nothing here touches torch.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    kind: str
    where: str
    value: float
    threshold: float
    stat: str


class _Once:
    """Re-arming latch: True on the first step a condition holds, False until it clears."""

    def __init__(self):
        self.active = False

    def __call__(self, cond: bool) -> bool:
        fire = cond and not self.active
        self.active = cond
        return fire


class DivergenceWatch:
    def __init__(self, window: int, loss_rise: float, grad_growth: float, acc_drop: float, reward_drop: float,
                 entropy_frac: float):
        self.window, self.loss_rise, self.grad_growth = window, loss_rise, grad_growth
        self.acc_drop, self.reward_drop, self.entropy_frac = acc_drop, reward_drop, entropy_frac
        self.loss_min, self.loss_run = math.inf, 0          # running min; consecutive steps above it
        self.grads: deque[float] = deque(maxlen=window)
        self.grad_min_median = math.inf
        self.rewards: deque[float] = deque(maxlen=window)
        self.entropies: deque[float] = deque(maxlen=window)
        self.start: dict[str, float] = {}                   # first value of each watched signal
        self.best: dict[str, float] = {}                    # best full-window mean / best eval
        self.latches = {k: _Once() for k in ("loss", "grad", "reward", "entropy")}
        self.acc_latches: dict[str, _Once] = {}

    # --- per-step signals ------------------------------------------------------------------------
    def step(self, loss: float | None, grad_norm: float | None, reward: float | None,
             entropy: float | None) -> list[Finding]:
        """Feed one step's signals (None: not measured by this recipe); returns the new findings."""
        out: list[Finding] = []
        if loss is not None:
            out += self._loss(loss)
        if grad_norm is not None and math.isfinite(grad_norm):
            out += self._grad(grad_norm)
        if reward is not None:
            out += self._reward(reward)
        if entropy is not None:
            out += self._entropy(entropy)
        return out

    def _loss(self, loss: float) -> list[Finding]:
        if math.isfinite(loss):
            self.loss_min = min(self.loss_min, loss)
        rise = loss - self.loss_min if math.isfinite(loss) else math.inf
        self.loss_run = self.loss_run + 1 if rise > self.loss_rise else 0
        if self.latches["loss"](self.loss_run >= self.window):
            return [Finding("loss_divergence", "train/loss", rise, self.loss_rise, "loss-min")]
        return []

    def _grad(self, g: float) -> list[Finding]:
        self.grads.append(g)
        if len(self.grads) < self.window:
            return []
        med = statistics.median(self.grads)
        ratio = med / self.grad_min_median if self.grad_min_median > 0 else 0.0
        self.grad_min_median = min(self.grad_min_median, med)
        if self.latches["grad"](ratio > self.grad_growth):
            return [Finding("grad_divergence", "train/grad_norm", ratio, self.grad_growth, "median/min_median")]
        return []

    def _reward(self, r: float) -> list[Finding]:
        self.rewards.append(r)
        start = self.start.setdefault("reward", r)
        if len(self.rewards) < self.window:
            return []
        cur = sum(self.rewards) / len(self.rewards)
        best = self.best["reward"] = max(self.best.get("reward", start), start, cur)
        if self.latches["reward"](best - cur > self.reward_drop and cur < start):
            return [Finding("reward_collapse", "rollout/reward_mean", best - cur, self.reward_drop, "best-mean")]
        return []

    def _entropy(self, h: float) -> list[Finding]:
        self.entropies.append(h)
        start = self.start.setdefault("entropy", h)
        if len(self.entropies) < self.window or start <= 0:
            return []
        cur = sum(self.entropies) / len(self.entropies)
        gained = bool(self.rewards) and sum(self.rewards) / len(self.rewards) > self.start.get("reward", -math.inf)
        if self.latches["entropy"](cur < self.entropy_frac * start and not gained):
            return [Finding("entropy_collapse", "rl/entropy", cur / start, self.entropy_frac, "mean/start")]
        return []

    # --- evals -------------------------------------------------------------------------------------
    def evaluation(self, values: dict[str, float]) -> list[Finding]:
        out = []
        for k, v in values.items():
            if not k.endswith("accuracy"):
                continue
            start = self.start.setdefault(k, v)
            best = self.best[k] = max(self.best.get(k, v), v)
            latch = self.acc_latches.setdefault(k, _Once())
            if latch(best - v > self.acc_drop and v < start):
                out.append(Finding("accuracy_collapse", k, best - v, self.acc_drop, "best-acc"))
        return out

    # --- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"loss_min": self.loss_min, "loss_run": self.loss_run, "grads": list(self.grads),
                "grad_min_median": self.grad_min_median, "rewards": list(self.rewards),
                "entropies": list(self.entropies), "start": dict(self.start), "best": dict(self.best),
                "latches": {k: v.active for k, v in self.latches.items()},
                "acc_latches": {k: v.active for k, v in self.acc_latches.items()}}

    def load_state_dict(self, s: dict) -> None:
        self.loss_min, self.loss_run, self.grad_min_median = s["loss_min"], s["loss_run"], s["grad_min_median"]
        for q, k in ((self.grads, "grads"), (self.rewards, "rewards"), (self.entropies, "entropies")):
            q.clear()
            q.extend(s[k])
        self.start, self.best = dict(s["start"]), dict(s["best"])
        for k, v in s["latches"].items():
            self.latches[k].active = v
        for k, v in s["acc_latches"].items():
            self.acc_latches.setdefault(k, _Once()).active = v
