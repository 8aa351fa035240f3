"""Engines: who executes a scaling recipe, for the trainer and for the generator. One registry.

  reference  (trainer)   bench/precision/linears/reference.py, the project's own fake-quant linear:
                         the numerics ground truth, runs every registered format on CPU and GPU
  torchao    (trainer)   torchao.float8 training (tensorwise, rowwise); emulate=True on CPU, real
                         FP8 GEMMs on sm89+. torchao has no delayed or 128x128-blockwise recipe here
  te         (trainer)   Transformer Engine (bench/precision/te.py: knob mapping, capability checks)
  inference  (generator) bench/precision/linears/inference.py: weights quantized once per refit,
                         W8A8 or weights-only W8A16 (FP4: W4A4 / W4A16); runs every registered format
`auto` picks, per side, the first engine in registry order that is available here and runs the
recipe exactly as configured: te > torchao > reference for the trainer, inference for the
generator. An engine only swaps Linears (by stable dotted name) and provides a forward context;
the planner (bench/precision/plan.py) decides which Linears, for every engine alike. A format no
GPU engine here runs says why (`QuantFormat.gpu_reason`, FP4: no Blackwell GEMMs wired in): te and
torchao are refused with that line on every device, and `auto` passes over them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from bench.core.errors import BadInput
from bench.precision.formats.base import format_of
from bench.precision.recipes import ScalingRecipe
from bench.precision.te import TransformerEngine

SIDES = ("trainer", "generator")


class Engine:
    """The interface: `unavailable(device)` and `unsupported(recipe, device, weights_only)` return
    one line of why not (or None); `convert(model, plan)` swaps plan.fp8_modules in place;
    `context(recipe)` wraps each forward."""
    name = "engine"
    sides: tuple[str, ...] = ("trainer",)

    def unavailable(self, device: torch.device) -> str | None:
        return None

    def unsupported(self, recipe: ScalingRecipe, device: torch.device | None = None, weights_only: bool = False
                    ) -> str | None:
        """device None: whether the recipe alone is supported (device rules not checked)."""
        return "weights-only quantization is a generator setting" if weights_only else None

    def convert(self, model, plan) -> None:
        raise NotImplementedError

    def context(self, recipe: ScalingRecipe):
        return contextlib.nullcontext()


class ReferenceEngine(Engine):
    name = "reference"

    def convert(self, model, plan):
        from bench.precision.linears.reference import convert_reference

        convert_reference(model, plan.recipe, plan.fp8_modules)


def _cast_to_autocast_dtype(module, args):
    """torchao's Float8Linear asks torch.is_autocast_enabled() without a device, i.e. about CUDA,
    so under CPU autocast it would quantize the fp32 activations where the reference engine and
    the generator quantize the bf16 ones. Casting first (what autocast does to an nn.Linear's
    input) makes every engine quantize the same values."""
    dev = args[0].device.type
    if dev != "cuda" and torch.is_autocast_enabled(dev):
        return (args[0].to(torch.get_autocast_dtype(dev)),) + tuple(args[1:])
    return None


class TorchAOEngine(Engine):
    name = "torchao"
    gpu = True  # a real low-precision GEMM library (the format's gpu_reason applies)
    SCALINGS = {"tensorwise": "tensorwise", "rowwise": "rowwise"}

    def unavailable(self, device):
        try:
            logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional-kernel load notes
            import torchao.float8  # noqa: F401
        except Exception as e:
            return f"torchao does not import ({type(e).__name__}: {e})"
        return None

    def unsupported(self, recipe, device=None, weights_only=False):
        if recipe.scaling not in self.SCALINGS:
            return f"torchao float8 training has no {recipe.scaling} scaling (has: {', '.join(self.SCALINGS)})"
        if recipe.scaling == "tensorwise" and (recipe.fwd_format, recipe.grad_format) != ("e4m3", "e5m2"):
            return "torchao tensorwise uses E4M3 forward / E5M2 grads only"
        return super().unsupported(recipe, device, weights_only)

    def convert(self, model, plan):
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        recipe = plan.recipe
        device = next(model.parameters()).device
        cfg = Float8LinearConfig.from_recipe_name(self.SCALINGS[recipe.scaling])
        # On CPU (or pre-sm89 GPUs) torchao emulates the FP8 GEMM on dequantized values.
        emulate = device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)
        cfg = dataclasses.replace(cfg, emulate=emulate,
                                  round_scales_to_power_of_2=recipe.pow2_scales or recipe.scaling == "rowwise")
        wanted = set(plan.fp8_modules)
        convert_to_float8_training(model, config=cfg, module_filter_fn=lambda m, fqn: fqn in wanted)
        for n in plan.fp8_modules:
            model.get_submodule(n).register_forward_pre_hook(_cast_to_autocast_dtype)


class InferenceEngine(Engine):
    name = "inference"
    sides = ("generator",)

    def unsupported(self, recipe, device=None, weights_only=False):
        return None

    def convert(self, model, plan):
        from bench.precision.linears.inference import InferenceLinear

        for n in plan.fp8_modules:
            model.set_submodule(n, InferenceLinear.from_linear(model.get_submodule(n), plan.recipe, n,
                                                               weights_only=plan.weights_only))


ENGINES: dict[str, Engine] = {e.name: e for e in (TransformerEngine(), TorchAOEngine(), ReferenceEngine(),
                                                  InferenceEngine())}


def _why_not(eng, recipe: ScalingRecipe, device: torch.device, weights_only: bool) -> str | None:
    gpu_reason = format_of(recipe).gpu_reason
    if getattr(eng, "gpu", False) and gpu_reason:  # the reason that holds on every device
        return gpu_reason
    return eng.unavailable(device) or eng.unsupported(recipe, device, weights_only)


def choose_engine(requested: str, recipe: ScalingRecipe, device: torch.device, side: str = "trainer",
                  weights_only: bool = False, key: str = "precision.engine") -> Engine:
    """`auto`: the first engine of this side that is available and runs the recipe as configured.
    An explicitly requested engine that cannot run here is bad input (exit 2), never a silent swap."""
    mine = {n: e for n, e in ENGINES.items() if side in e.sides}
    if requested == "auto":
        for eng in mine.values():
            if _why_not(eng, recipe, device, weights_only) is None:
                return eng
        raise BadInput(f"{key}=auto: no {side} engine runs {recipe.name} here: " +
                       "; ".join(f"{n}: {_why_not(e, recipe, device, weights_only)}" for n, e in mine.items()))
    if requested not in mine:
        raise BadInput(f"unknown {key}={requested!r}; valid: auto, {', '.join(mine)}")
    eng = mine[requested]
    if (reason := _why_not(eng, recipe, device, weights_only)):
        ok = [n for n, e in mine.items() if not _why_not(e, recipe, device, weights_only)]
        raise BadInput(f"{key}={requested} cannot run {recipe.name} here: {reason}; valid here: {', '.join(ok) or '-'}")
    return eng

