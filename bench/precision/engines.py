"""Engines: who executes an FP8 recipe. One registry; `auto` picks te > torchao > reference.

  reference  bench/precision/linear.py, the project's own FP8 linear: the numerics ground truth,
             runs every recipe on CPU and GPU (torch._scaled_mm where scales are per tensor).
  torchao    torchao.float8 training (tensorwise, rowwise); emulate=True on CPU, real FP8 GEMMs
             on sm89+. torchao has no delayed or 128x128-blockwise training recipe here.
  te         Transformer Engine modules under te.fp8_autocast with the matching recipe object;
             needs CUDA and an importable transformer_engine.

The engine only swaps Linears (by stable dotted name) and provides a context for the forward;
which modules stay in high precision is decided here too (the staged-rollout policy), so every
engine honours it the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.errors import BadInput
from bench.precision.mixed import is_fp8
from bench.precision.recipes import Recipe, get_recipe, unsupported_linear


@dataclass
class PrecisionPlan:
    """What runs where; printed at start-up and recorded in summary.json."""
    name: str
    engine: str
    recipe: Recipe | None = None
    fp8_modules: list[str] = field(default_factory=list)
    high_precision_modules: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.recipe is None:
            return f"{self.name}: no FP8 modules"
        r = self.recipe
        return (f"{self.name} via {self.engine}: {len(self.fp8_modules)} Linears in FP8 "
                f"({r.scaling}, fwd {r.fwd_format} / grad {r.grad_format}), "
                f"{len(self.high_precision_modules)} kept high precision: "
                f"{', '.join(self.high_precision_modules) or '-'}")


def select_fp8_modules(model: nn.Module, keep_cfg) -> tuple[list[str], list[str]]:
    """Split the model's Linears into FP8 and kept-high-precision by name pattern and by
    first/last N transformer layers (the staged rollout: FP8 in the middle of the network first)."""
    keep_cfg = dict(keep_cfg or {})
    patterns = list(keep_cfg.get("patterns", []) or [])
    first_n, last_n = int(keep_cfg.get("first_n_layers", 0)), int(keep_cfg.get("last_n_layers", 0))
    n_layers = len(getattr(model, "layers", []))
    kept_layers = set(range(first_n)) | set(range(n_layers - last_n, n_layers))
    fp8, keep = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = name.split(".")
        in_kept_layer = parts[0] == "layers" and int(parts[1]) in kept_layers
        (keep if in_kept_layer or any(fnmatch.fnmatch(name, p) for p in patterns) else fp8).append(name)
    return fp8, keep


def high_precision_linear(mod: nn.Module) -> nn.Linear:
    """A plain nn.Linear sharing `mod`'s Parameters (so optimizer state carries over): the
    fallback policy uses it to take one module out of FP8 mid-run."""
    if hasattr(mod, "to_linear"):
        return mod.to_linear()
    lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
    lin.weight = mod.weight
    lin.bias = mod.bias
    return lin


class Engine:
    name = "engine"

    def unavailable(self, device: torch.device) -> str | None:
        return None

    def unsupported(self, recipe: Recipe) -> str | None:
        return None

    def convert(self, model: nn.Module, recipe: Recipe, names: list[str]) -> None:
        raise NotImplementedError

    def context(self, recipe: Recipe):
        return contextlib.nullcontext()


class ReferenceEngine(Engine):
    name = "reference"

    def convert(self, model, recipe, names):
        from bench.precision.linear import ReferenceFP8Linear

        for n in names:
            model.set_submodule(n, ReferenceFP8Linear.from_linear(model.get_submodule(n), recipe, n))


class TorchAOEngine(Engine):
    name = "torchao"
    RECIPES = {"tensorwise": "tensorwise", "rowwise": "rowwise"}

    def unavailable(self, device):
        try:
            logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional-kernel load notes
            import torchao.float8  # noqa: F401
        except Exception as e:
            return f"torchao does not import ({type(e).__name__}: {e})"
        return None

    def unsupported(self, recipe):
        if recipe.scaling not in self.RECIPES:
            return f"torchao float8 training has no {recipe.scaling} scaling (has: {', '.join(self.RECIPES)})"
        if recipe.scaling == "tensorwise" and (recipe.fwd_format, recipe.grad_format) != ("e4m3", "e5m2"):
            return "torchao tensorwise uses E4M3 forward / E5M2 grads only"
        return None

    def convert(self, model, recipe, names):
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        device = next(model.parameters()).device
        cfg = Float8LinearConfig.from_recipe_name(self.RECIPES[recipe.scaling])
        # On CPU (or pre-sm89 GPUs) torchao emulates the FP8 GEMM on dequantized values.
        emulate = device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)
        cfg = dataclasses.replace(cfg, emulate=emulate,
                                  round_scales_to_power_of_2=recipe.pow2_scales or recipe.scaling == "rowwise")
        wanted = set(names)
        convert_to_float8_training(model, config=cfg, module_filter_fn=lambda m, fqn: fqn in wanted)


class TransformerEngine(Engine):
    name = "te"

    def unavailable(self, device):
        if device.type != "cuda":
            return "Transformer Engine needs CUDA; this device is " + device.type
        try:
            import transformer_engine.pytorch  # noqa: F401
        except Exception as e:
            return f"transformer_engine does not import ({type(e).__name__})"
        return None

    def unsupported(self, recipe):
        if recipe.scaling == "rowwise":
            return "Transformer Engine has no per-row power-of-2 recipe"
        return None

    def te_recipe(self, recipe: Recipe):
        from transformer_engine.common import recipe as ter

        fmt = ter.Format.HYBRID if recipe.grad_format == "e5m2" else ter.Format.E4M3
        if recipe.scaling == "delayed":
            return ter.DelayedScaling(fp8_format=fmt, amax_history_len=recipe.amax_history_len,
                                      amax_compute_algo=recipe.amax_compute_algo, margin=recipe.margin)
        if recipe.scaling == "tensorwise":
            return ter.Float8CurrentScaling(fp8_format=fmt)
        if recipe.scaling == "blockwise":
            return ter.Float8BlockScaling(fp8_format=fmt)
        return ter.MXFP8BlockScaling(fp8_format=fmt)

    def convert(self, model, recipe, names):
        import transformer_engine.pytorch as te

        for n in names:
            old = model.get_submodule(n)
            new = te.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            params_dtype=old.weight.dtype, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
            model.set_submodule(n, new)

    def context(self, recipe):
        import transformer_engine.pytorch as te

        return te.fp8_autocast(enabled=True, fp8_recipe=self.te_recipe(recipe))


ENGINES: dict[str, Engine] = {e.name: e for e in (TransformerEngine(), TorchAOEngine(), ReferenceEngine())}


def choose_engine(requested: str, recipe: Recipe, device: torch.device) -> Engine:
    """`auto`: the first of te, torchao, reference that is available and supports the recipe.
    An explicitly requested engine that cannot run here is bad input (exit 2), never a silent swap."""
    if requested == "auto":
        for eng in ENGINES.values():
            if eng.unavailable(device) is None and eng.unsupported(recipe) is None:
                return eng
    if requested not in ENGINES:
        raise BadInput(f"unknown precision.engine={requested!r}; valid: auto, {', '.join(ENGINES)}")
    eng = ENGINES[requested]
    reason = eng.unavailable(device) or eng.unsupported(recipe)
    if reason:
        raise BadInput(f"precision.engine={requested} cannot run {recipe.name} here: {reason}; "
                       f"valid here: {', '.join(n for n, e in ENGINES.items() if not (e.unavailable(device) or e.unsupported(recipe)))}")
    return eng


def plan_precision(model: nn.Module, precision_cfg, device: torch.device) -> tuple[PrecisionPlan, Engine | None]:
    """Validate everything about a precision config against this model and device, before any
    compute: recipe name, engine, module shapes. Returns the plan and the engine to apply."""
    name = precision_cfg["name"]
    if not is_fp8(name):
        return PrecisionPlan(name=name, engine="torch.autocast" if name != "fp32" else "fp32"), None
    try:
        recipe = get_recipe(precision_cfg)
    except ValueError as e:
        raise BadInput(str(e)) from None
    fp8, keep = select_fp8_modules(model, precision_cfg.get("keep_high_precision"))
    if (reason := unsupported_linear(model, recipe, fp8)):
        raise BadInput(f"{reason}; keep it in high precision (precision.keep_high_precision.patterns) "
                       f"or resize the model")
    engine = choose_engine(precision_cfg.get("engine", "auto"), recipe, device)
    return PrecisionPlan(name=name, engine=engine.name, recipe=recipe, fp8_modules=fp8, high_precision_modules=keep), engine


def apply_precision(model: nn.Module, plan: PrecisionPlan, engine: Engine | None) -> None:
    if engine is not None and plan.fp8_modules:
        engine.convert(model, plan.recipe, plan.fp8_modules)


def fallback_to_high_precision(model: nn.Module, plan: PrecisionPlan, name: str) -> bool:
    """Switch one FP8 module back to a plain Linear (same Parameters). False if it wasn't FP8."""
    if name not in plan.fp8_modules:
        return False
    model.set_submodule(name, high_precision_linear(model.get_submodule(name)))
    plan.fp8_modules.remove(name)
    plan.high_precision_modules.append(name)
    return True
