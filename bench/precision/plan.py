"""The precision planner: one code path plans and applies the trainer's and the generator's
precision, validates it against the model and device before any compute, and records what ran.

  plan_precision(model, precision_cfg, device, side)  -> (PrecisionPlan, engine or None)
  apply_precision(model, plan, engine)                 swaps the planned Linears in place
  PrecisionPlan.fallback(model, name, step)            one module back to high precision, recorded
  PrecisionPlan.summary()                              the summary.json record
  print_precision_state(plans, model, device)          the start-up table

A precision config is a Hydra precision group (conf/precision/<name>.yaml, dict or DictConfig)
or just a name. Its planning keys: `name`, `engine`, `keep_high_precision` (patterns,
first_n_layers, last_n_layers: the staged rollout) and, for the generator, `weights_only`; the
other keys are ScalingRecipe knobs (bench.precision.recipes.get_recipe). PLAN_DEFAULTS fills
keys a caller leaves out (a bare name, a test's dict); it equals the conf/precision defaults.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.core.errors import BadInput
from bench.precision.engines import SIDES, Engine, choose_engine
from bench.precision.mixed import HIGH_PRECISION, compute_dtype, is_fp8
from bench.precision.formats.base import format_of, unsupported_linear
from bench.precision.recipes import RECIPES, ScalingRecipe, get_recipe

# The one place of the planning keys' defaults: the config schema (bench/config/schema.py) reads
# them from here, and callers that pass a bare name or a partial dict get the same values.
PLAN_DEFAULTS = {"engine": "auto", "weights_only": False,
                 "keep_high_precision": {"patterns": ["lm_head"], "first_n_layers": 0, "last_n_layers": 0}}


@dataclass
class PrecisionPlan:
    """What runs where, on one side (trainer or generator); printed at start-up and recorded in
    summary.json. `kept_modules` are kept in high precision by the config; `fallbacks` maps each
    module the instability policy switched back to high precision to the step it happened at."""
    name: str
    engine: str
    side: str = "trainer"
    recipe: ScalingRecipe | None = None
    weights_only: bool = False
    fp8_modules: list[str] = field(default_factory=list)
    kept_modules: list[str] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)

    @property
    def high_precision_modules(self) -> list[str]:
        return self.kept_modules + list(self.fallbacks)

    def fallback(self, model: nn.Module, name: str, step: int) -> bool:
        """Switch one FP8 module back to a plain Linear sharing its Parameters (optimizer state
        carries over) and record the step. False if it was not FP8 (already switched, or kept)."""
        if name not in self.fp8_modules:
            return False
        mod = model.get_submodule(name)
        model.set_submodule(name, mod.to_linear() if hasattr(mod, "to_linear") else _plain_linear(mod))
        self.fp8_modules.remove(name)
        self.fallbacks[name] = int(step)
        return True

    def summary(self) -> dict:
        """summary.json's record of this side's precision: what was planned and what actually ran."""
        r = self.recipe
        return {"recipe": self.name, "engine": self.engine, "scaling": r.scaling if r else None,
                "formats": f"{r.fwd_format}/{r.grad_format}" if r else None,
                "weights_only": self.weights_only, "fp8_modules": len(self.fp8_modules),
                "kept_modules": list(self.kept_modules),
                "fallbacks": [{"module": n, "step": s} for n, s in self.fallbacks.items()]}

    def row(self) -> tuple[str, ...]:
        """(recipe, engine, FP8 Linears, high-precision Linears, compute dtype) for the table."""
        r = self.recipe
        wo = f"{format_of(r).inference_kind[1]} " if r is not None else ""
        kind = (wo if self.weights_only else "") + (f"{r.scaling}: {r.fwd_format}/{r.grad_format}" if r else "")
        fp8 = f"{len(self.fp8_modules)} ({kind})" if r else "0"
        hp = ", ".join(self.kept_modules + [f"{n} (fallback@{s})" for n, s in self.fallbacks.items()]) if r else "all"
        return self.name, self.engine, fp8, hp or "-", str(compute_dtype(self.name)).replace("torch.", "")


def _plain_linear(mod: nn.Module) -> nn.Linear:
    """A plain nn.Linear holding `mod`'s Parameters (for engines whose modules lack to_linear)."""
    lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
    lin.weight, lin.bias = mod.weight, mod.bias
    return lin


def _opt(cfg, key):
    """A planning key of a precision config, PLAN_DEFAULTS where the caller left it out."""
    return cfg[key] if key in cfg and cfg[key] is not None else PLAN_DEFAULTS[key]


def select_fp8_modules(model: nn.Module, keep_cfg) -> tuple[list[str], list[str]]:
    """Split the model's Linears into FP8 and kept-high-precision by name pattern and by
    first/last N transformer layers (the staged rollout: FP8 in the middle of the network first)."""
    patterns = list(keep_cfg["patterns"] or [])
    first_n, last_n = int(keep_cfg["first_n_layers"]), int(keep_cfg["last_n_layers"])
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


def plan_precision(model: nn.Module, precision_cfg, device, side: str = "trainer") -> tuple[PrecisionPlan, Engine | None]:
    """Validate everything about a precision config against this model and device, before any
    compute: recipe name and knobs, engine, module shapes, weights_only. Returns the plan and the
    engine to apply (None for fp32/bf16/fp16, which run under autocast alone)."""
    if side not in SIDES:
        raise ValueError(f"side={side!r}; valid: {', '.join(SIDES)}")
    device, group = torch.device(device), f"{side}_precision" if side == "generator" else "precision"
    cfg = {"name": precision_cfg} if isinstance(precision_cfg, str) else precision_cfg
    name = cfg["name"]
    weights_only = bool(_opt(cfg, "weights_only"))
    if weights_only and side != "generator":
        raise BadInput(f"{group}.weights_only=true is a generator setting (W8A16 rollouts); valid here: false")
    if not is_fp8(name):
        return PrecisionPlan(name=name, engine="fp32" if name == "fp32" else "torch.autocast", side=side), None
    if name not in RECIPES:
        raise BadInput(f"unknown {group} {name!r}; valid: {', '.join((*HIGH_PRECISION, *RECIPES))}")
    try:
        recipe = get_recipe(cfg)
    except ValueError as e:
        raise BadInput(str(e)) from None
    keep = _opt(cfg, "keep_high_precision")
    keep = {k: keep[k] if k in keep else PLAN_DEFAULTS["keep_high_precision"][k] for k in PLAN_DEFAULTS["keep_high_precision"]}
    fp8, kept = select_fp8_modules(model, keep)
    if (reason := unsupported_linear(model, recipe, fp8)):
        raise BadInput(f"{reason}; keep it in high precision ({group}.keep_high_precision.patterns) or resize the model")
    engine = choose_engine(str(_opt(cfg, "engine")), recipe, device, side, weights_only, key=f"{group}.engine")
    return PrecisionPlan(name=name, engine=engine.name, side=side, recipe=recipe, weights_only=weights_only,
                         fp8_modules=fp8, kept_modules=kept), engine


def apply_precision(model: nn.Module, plan: PrecisionPlan, engine: Engine | None) -> None:
    if engine is not None and plan.fp8_modules:
        engine.convert(model, plan)


def fallback_to_high_precision(model: nn.Module, plan: PrecisionPlan, name: str, step: int = -1) -> bool:
    """PrecisionPlan.fallback as a function (step -1: not known, e.g. an old checkpoint)."""
    return plan.fallback(model, name, step)


def print_precision_state(plans: dict[str, PrecisionPlan], model: nn.Module, device) -> None:
    """What runs in which dtype, through which engine, on which device: printed at start-up."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"precision state on {device}", show_lines=False)
    for col in ("side", "recipe", "engine", "FP8 Linears", "high-precision Linears", "compute dtype"):
        table.add_column(col)
    for side, plan in plans.items():
        table.add_row(side, *plan.row())
    n = sum(p.numel() for p in model.parameters())
    Console(width=160).print(table)
    print(f"master weights and optimizer state: fp32 ({n / 1e6:.2f}M parameters); logits and "
          f"log-softmax: fp32; trainer norms and RoPE: fp32 (the generator's: generator.kernels)", flush=True)
