"""Reproducible instability on a laptop: inject an activation outlier into one Linear's input.

From `from_step` on, channel `channel` of the input to module `module` is multiplied by
`magnitude · growth^(step − from_step)` (training forwards only).

What delayed scaling (fp8_delayed, Transformer Engine's DelayedScaling) does with it: the scale
of step k is s = fmax / (2^margin · max(amax history before k)), so the cast of step k cannot see
step k's own outlier. At `from_step` the history holds only ordinary activations, and every
element of the outlier channel whose |x|·s > fmax is clamped: with the tiny model that is most of
the channel, 1 of d_ff (= 384) elements per token, a clamped fraction of ~0.002 — above the default
`policy.overflow_frac` (0.001), so an `overflow` event at `<module>/input` fires at `from_step`
(counted from the clamp counts of every FP8 cast, every step, not only on monitor-sampled steps).
From the next step on the history holds the outlier: with `growth` g, only outlier elements above
1/g of the last amax overflow, a fraction typically below the threshold, so the event does not
repeat every step. What follows is the
damage the clamped step did (grad and loss spikes, divergence events), not more overflow.
Current (tensorwise) scaling sees the outlier in this step's amax and rescales instead, trading
overflow for coarser resolution of every other channel (underflow).
"""
from __future__ import annotations

import torch.nn as nn

from bench.core.errors import BadInput


class OutlierInjector:
    def __init__(self, model: nn.Module, cfg):
        # Read by attribute: the defaults live in conf/stress/*.yaml (and the typed schema) only.
        self.cfg = cfg
        self.enabled = bool(cfg.enabled)
        self.step = -1
        self.handle = None
        if not self.enabled:
            return
        name = cfg.module
        names = [n for n, m in model.named_modules() if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2]
        if name not in names:
            raise BadInput(f"stress.module={name!r} is not a Linear of this model; valid: {', '.join(names)}")
        self.name = name
        self.handle = model.get_submodule(name).register_forward_pre_hook(self._hook)

    def set_step(self, step: int) -> None:
        self.step = step

    def factor(self) -> float:
        if not self.enabled or self.step < int(self.cfg.from_step):
            return 1.0
        return float(self.cfg.magnitude) * float(self.cfg.growth) ** (self.step - int(self.cfg.from_step))

    def _hook(self, module, args):
        f = self.factor()
        if f == 1.0 or not module.training:
            return None
        x = args[0].clone()
        x[..., int(self.cfg.channel)] *= f
        return (x,) + tuple(args[1:])

    def rehook(self, model: nn.Module) -> None:
        """After a fallback swapped the module, hook the new one."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = model.get_submodule(self.name).register_forward_pre_hook(self._hook)
