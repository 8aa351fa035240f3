"""W8A8 FP8 linear for the generator: FP8 weights and FP8 activations, as inference engines run it.

How this differs from the trainer's FP8 linear (bench/precision/linear.py):
  weights      quantized ONCE, at refit, with the recipe's weight granularity (per tensor,
               per row, 128x128 blocks, 1x32 MX blocks). Between refits the weights are
               constant, so re-quantizing them every forward (what training must do, because
               the optimizer moves them every step) would only cost time. The engine keeps the
               FP8 bytes and the compact scale, no master weights (but see emulation below).
  activations  quantized dynamically on every call with the recipe's input granularity, from
               the autocast dtype (bf16) the activations live in, like the trainer.
  no backward  no grad_output role, no saved tensors, no amax histories.

fp8_delayed at inference: delayed scaling exists to avoid an extra pass over tensors that
change every training step (the scale comes from an amax history, updated after use). A
generator has no such history (the trainer's belongs to the trainer: sharing it would be
sharing state across engines), and its weights are frozen between refits, so their exact amax
is free to compute once. So `fp8_delayed` runs as current (per-tensor) scaling of the weights
at refit and of the activations per call, keeping the recipe's formats and margin; this is
how inference engines quantize a high-precision checkpoint on the fly (e.g. vLLM's dynamic
FP8: weights at load, activation scales per call).

Per-tensor activation scales (tensorwise, delayed) see every row of the GEMM: a sequence's
numerics then depend on its batch-mates, and a one-token decode step quantizes with a
different scale than the full forward that scores the same token. Row-, tile- and block-wise
scales are per token, hence batch-invariant; that difference shows in the mismatch metrics.

The GEMM: torch._scaled_mm (FP8 x FP8 with fp32 accumulation, dequantisation scales applied to
the output) when the scales factor out of the dot product as an outer product: both per-tensor,
or both per-row (rowwise). Tile- and block-wise scales vary along the reduction dim, which a
plain scaled GEMM cannot express, so those multiply the dequantized operands in fp32 — the same
products up to accumulation order; the dequantized weight is then computed once at refit
(emulation buys speed with memory here; a real blockwise kernel keeps only the FP8 bytes).
Output: the autocast dtype when autocast is on (bf16 for FP8 recipes), else the input's dtype.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

import torch
import torch.nn as nn

from bench.precision.quantize import Quantized, quantize
from bench.precision.recipes import get_recipe, unsupported_linear

KeepSpec = Callable[[str], bool] | Iterable[str] | None
DEFAULT_KEEP = ("lm_head",)


class FP8InferenceLinear(nn.Module):
    """y = x Wᵀ with W stored in FP8 (quantized at `load_weight`) and x quantized per call."""

    def __init__(self, in_features: int, out_features: int, recipe, name: str = "", device=None):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.recipe = get_recipe(recipe)
        # Non-persistent: the generator's weights come from refit, never from a checkpoint.
        self.register_buffer("qweight", torch.empty(0, dtype=torch.float8_e4m3fn, device=device), persistent=False)
        self.register_buffer("w_scale", torch.empty(0, device=device), persistent=False)
        self.register_buffer("w_dequant", None, persistent=False)  # fp32 x̂_W, emulated GEMMs only
        self._w: Quantized | None = None
        self.weight_loads = 0  # how many times the weight was quantized (once per refit)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str = "") -> "FP8InferenceLinear":
        if linear.bias is not None:
            raise ValueError(f"{name}: FP8InferenceLinear is bias-free like bench.model.linear()")
        mod = cls(linear.in_features, linear.out_features, recipe, name, device=linear.weight.device)
        mod.load_weight(linear.weight)
        return mod

    @property
    def scaled_mm(self) -> bool:
        """True when the GEMM can run as torch._scaled_mm (scales factor out of the dot product)."""
        return self.recipe.per_tensor or self.recipe.scaling == "rowwise"

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantize a new weight [out, in] (from refit). Always fresh tensors: the trainer's
        weight is read, never kept."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{self.name}: weight {tuple(w.shape)} != {(self.out_features, self.in_features)}")
        dev = self.qweight.device
        # No history argument: for fp8_delayed that is current scaling (with the recipe's margin).
        q = quantize(w.detach().to(dev, torch.float32), self.recipe, "weight")
        self.qweight, self.w_scale = q.data, q.scale
        self._w = Quantized(self.qweight, self.w_scale, q.tile, q.fmt)
        # The dequantized weight is only needed where _scaled_mm cannot express the scales.
        self.w_dequant = None if self.scaled_mm else q.dequantize()
        self.weight_loads += 1

    def _gemm(self, qx: Quantized, out_dtype: torch.dtype) -> torch.Tensor:
        if self.scaled_mm:
            # _scaled_mm takes dequantisation factors (1/s): per tensor [] or per row [M,1]/[1,N].
            sa = (1.0 / qx.scale).float()
            sb = (1.0 / self.w_scale).float()
            if sb.dim():
                sb = sb.reshape(1, -1)
            try:
                return torch._scaled_mm(qx.data, self.qweight.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
            except (RuntimeError, NotImplementedError):
                pass  # a shape/format/scale layout this device's kernel lacks: same math below
            return (qx.dequantize() @ self._w.dequantize().t()).to(out_dtype)
        return (qx.dequantize() @ self.w_dequant.t()).to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        # Quantize from the dtype activations live in (bf16 under autocast), like the trainer.
        x = x.to(out_dtype)
        shape = x.shape
        with torch.autocast(dev, enabled=False):
            qx = quantize(x.reshape(-1, shape[-1]), self.recipe, "input")
            y = self._gemm(qx, out_dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        r = self.recipe
        gemm = "scaled_mm" if self.scaled_mm else "dequantized fp32"
        return f"{self.in_features}, {self.out_features}, recipe={r.name} (W8A8 {r.scaling}, {gemm})"


def keep_predicate(keep: KeepSpec) -> Callable[[str], bool]:
    """A predicate name -> keep in high precision, from a predicate, a list of fnmatch patterns
    on dotted module names, or None (the default: keep `lm_head`, whose logits feed the
    log-softmax every mismatch metric is computed from)."""
    if callable(keep):
        return keep
    patterns = tuple(DEFAULT_KEEP if keep is None else ([keep] if isinstance(keep, str) else keep))
    return lambda name: any(fnmatch.fnmatch(name, p) for p in patterns)


def swap_linears_to_fp8(model: nn.Module, recipe, keep: KeepSpec = None) -> tuple[list[str], list[str]]:
    """Replace every nn.Linear of `model` (a generator's own copy) by an FP8InferenceLinear,
    except the kept ones. Returns (fp8 names, kept names). Raises ValueError naming a Linear
    whose shape the recipe cannot run, before swapping anything."""
    recipe = get_recipe(recipe)
    keeps = keep_predicate(keep)
    fp8, kept = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            (kept if keeps(name) else fp8).append(name)
    if (reason := unsupported_linear(model, recipe, fp8)):
        raise ValueError(f"{reason}; keep it in high precision or resize the model")
    for name in fp8:
        model.set_submodule(name, FP8InferenceLinear.from_linear(model.get_submodule(name), recipe, name))
    return fp8, kept
