"""Numerics monitor: what FP8 casts do to the tensors of this run, on sampled steps.

For every FP8 Linear and each role (input, weight, grad_output) it records the DESIGN.md §6
stats `numerics/<module>/<role>/{amax,scale,overflow_frac,underflow_frac,sqnr_db}` and the
aggregates `numerics/{overflow_frac_max,underflow_frac_max,sqnr_db_min,nonfinite_count}`.

Where the numbers come from:
  reference engine  the FP8 linear reports the stats of the quantization it actually performed,
                    with the scales it actually used (for fp8_delayed that is the stale history
                    scale: exactly how delayed scaling overflows when activations jump).
  torchao / te      their quantizers are opaque, so hooks apply the recipe's own quantizer
                    (bench.precision.formats.base.quantize) to the same tensors (current scaling).
Shadow recipes: on the same sampled steps, every Linear's tensors are also pushed through other
recipes (`numerics/shadow/<recipe>/<role>/...` aggregates), so one bf16 run predicts how each
FP8 recipe would fare on it.

FP4 recipes (nvfp4, mxfp4): the reference linear reports bench.precision.stats.quant_stats in
the FP4 format's keys, which add `scale_sat_frac` (block decode scales clamped at 448 / outside E8M0) and
`zero_block_frac` (blocks flushed whole to zero) to the stats above; they are logged per module
and as the aggregates `numerics/{scale_sat_frac_max,zero_block_frac_max}`. The policy raises a
zero_block_frac above `policy.zero_block_frac` as an `underflow` event (stat zero_block_frac).
FP4 shadow recipes go through the same FP4 stats.

Every step, sampled or not: non-finite activations (a device counter), and the elements each
FP8 cast clamped to ±max (the reference linear's per-role device counters, `clamp_fracs`). Both
are read with one host sync per step, so an overflow (e.g. a one-step amax jump under delayed
scaling) is an event on the step it happens; the full statistics stay on sampled steps.
torchao and TE casts are opaque, so their clamps are seen on sampled steps only, through the
recipe's own quantizer (current scaling, which never clamps: amax·s <= max by construction).
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn

from bench.precision.formats import FORMATS
from bench.precision.formats.base import quantize
from bench.precision.formats.fp8_scales import AmaxHistory
from bench.precision.recipes import ScalingRecipe, get_recipe
from bench.precision.stats import quant_stats

STATS = ("amax", "scale", "overflow_frac", "underflow_frac", "sqnr_db")
FP4_STATS = ("scale_sat_frac", "zero_block_frac")  # logged where a record has them (FP4 casts)


def _cast_stats(x2: torch.Tensor, recipe: ScalingRecipe, role: str, history: AmaxHistory | None = None) -> dict:
    """The stats of casting x2 with `recipe` in `role`, in the keys of the recipe's format
    (FP8, FP4: bench.precision.stats)."""
    return quant_stats(x2, quantize(x2, recipe, role, history=history))


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(-1, x.shape[-1])


def _aggregate(records: dict[tuple[str, str], dict], prefix: str) -> dict[str, float]:
    if not records:
        return {}
    vals = list(records.values())
    out = {f"{prefix}overflow_frac_max": max(v["overflow_frac"] for v in vals),
           f"{prefix}underflow_frac_max": max(v["underflow_frac"] for v in vals),
           f"{prefix}sqnr_db_min": min(v["sqnr_db"] for v in vals)}
    for k in FP4_STATS:
        if (have := [v[k] for v in vals if k in v]):
            out[f"{prefix}{k}_max"] = max(have)
    return out


class NumericsMonitor:
    def __init__(self, model: nn.Module, plan, interval: int, shadow: list[str] | None = None,
                 per_module: bool = True):
        self.model, self.plan, self.interval = model, plan, max(int(interval), 0)
        self.per_module = per_module
        self.shadow: dict[str, ScalingRecipe] = {n: get_recipe(n) for n in (shadow or []) if n != plan.name}
        self.shadow_hist: dict[tuple, AmaxHistory] = {}
        self.records: dict[tuple[str, str], dict] = {}
        self.shadow_records: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        self.active = False
        self.nonfinite = None  # device tensor, accumulated by activation hooks
        self.handles: list = []
        self.attach()

    # --- wiring ---------------------------------------------------------------------------
    def attach(self) -> None:
        """(Re)install hooks; called again after a fallback swapped a module."""
        for h in self.handles:
            h.remove()
        self.handles = []
        fp8 = set(self.plan.fp8_modules)
        for name, mod in self.model.named_modules():
            if hasattr(mod, "observer"):  # reference FP8 linear: reports its own quantization
                mod.observer = None
                observe = None
            elif name in fp8:  # torchao / te module: re-apply the recipe's quantizer in a hook
                observe = self._observe_external
            elif isinstance(mod, nn.Linear) and self.shadow:
                observe = None
            else:
                continue
            if observe is not None or self.shadow:
                self._hook(name, mod, observe)
        blocks = list(getattr(self.model, "layers", [])) + [self.model]
        for b in blocks:
            self.handles.append(b.register_forward_hook(self._count_nonfinite))

    def _hook(self, name, mod, observe):
        def fwd(module, args, out):
            if not self.active:
                return
            x = args[0]
            if observe is not None:
                observe(name, "input", x)
                observe(name, "weight", module.weight)
            self._shadow(name, "input", x)
            self._shadow(name, "weight", module.weight)
            if out.requires_grad:
                out.register_hook(lambda g: self._grad(name, g, observe))
        self.handles.append(mod.register_forward_hook(fwd))

    def _grad(self, name, g, observe):
        if observe is not None:
            observe(name, "grad_output", g)
        self._shadow(name, "grad_output", g)

    def _count_nonfinite(self, module, args, out):
        n = sum((~torch.isfinite(t.detach())).sum() for t in (out if isinstance(out, tuple) else (out,)))  # a block returns (residual, mlp output)
        self.nonfinite = n if self.nonfinite is None else self.nonfinite + n

    # --- observation ----------------------------------------------------------------------
    def _observe_reference(self, name: str, role: str, stats: dict) -> None:
        self.records[(name, role)] = stats

    def _observe_external(self, name: str, role: str, x: torch.Tensor) -> None:
        self.records[(name, role)] = _cast_stats(_as_2d(x), self.plan.recipe, role)

    def _shadow(self, name: str, role: str, x: torch.Tensor) -> None:
        x2 = _as_2d(x)
        for rname, r in self.shadow.items():
            hist = None
            if r.scaling == "delayed":  # its own history, advanced on sampled steps only
                hist = self.shadow_hist.setdefault((rname, name, role), AmaxHistory(r.amax_history_len, r.amax_compute_algo, r.margin))
            if hist is not None:
                q = quantize(x2, r, role, history=hist)
                self.shadow_records[rname][(name, role)] = quant_stats(x2, q, FORMATS[r.format_for(role)])
                hist.update(x2.abs().max(), used_scale=q.scale)
            else:
                self.shadow_records[rname][(name, role)] = _cast_stats(x2, r, role)

    # --- per step -------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        self.active = self.interval > 0 and step % self.interval == 0
        self.records.clear()
        self.shadow_records.clear()
        self.nonfinite = None
        for mod in self.model.modules():
            if hasattr(mod, "observer"):
                mod.observer = self._observe_reference if self.active else None

    def nonfinite_count(self) -> int:
        return 0 if self.nonfinite is None else int(self.nonfinite)

    def collect(self) -> dict[str, float]:
        """Metrics of the sampled step (empty dict on other steps)."""
        if not self.active:
            return {}
        out: dict[str, float] = {}
        if self.per_module:
            for (name, role), st in self.records.items():
                for k in STATS + FP4_STATS:
                    if k in st:
                        out[f"numerics/{name}/{role}/{k}"] = st[k]
        out.update(_aggregate(self.records, "numerics/"))
        for rname, recs in self.shadow_records.items():
            for role in ("input", "weight", "grad_output"):
                sub = {k: v for k, v in recs.items() if k[1] == role}
                out.update(_aggregate(sub, f"numerics/shadow/{rname}/{role}/"))
        return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}

    def clamp_fracs(self) -> dict[tuple[str, str], float]:
        """{(module, role): clamped elements / elements cast} over this step's FP8 casts of every
        module that counts them (the reference linear), and reset the counters. One host sync."""
        keys, counts, numels = [], [], []
        for name, mod in self.model.named_modules():
            if hasattr(mod, "pop_clamp_counts"):
                for role, (c, n) in mod.pop_clamp_counts().items():
                    keys.append((name, role))
                    counts.append(c)
                    numels.append(n)
        if not keys:
            return {}
        vals = torch.stack(counts).tolist()
        return {k: c / max(n, 1) for k, c, n in zip(keys, vals, numels)}

    def close(self):
        for h in self.handles:
            h.remove()
