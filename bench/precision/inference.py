"""The inference linear the generator's precision engine swaps in: W8A8 (FP8 weights and FP8
activations) or, with `weights_only`, W8A16 (FP8 weights, activations in the compute dtype).

How this differs from the trainer's FP8 linear (bench/precision/linear.py):
  weights      quantized ONCE, at refit (`load_weight`), with the recipe's weight granularity
               (per tensor, per row, 128x128 blocks, 1x32 MX blocks, or whatever a registered
               recipe's quantizer does). Between refits the weights are constant, so
               re-quantizing them every forward (what training must do, because the optimizer
               moves them every step) would only cost time.
  activations  W8A8: quantized on every call with the recipe's input granularity, from the
               autocast dtype (bf16) the activations live in, like the trainer. W8A16: not
               quantized (the quantization-aware-rollout setting, DESIGN.md §5).
  no backward  no grad_output role, no saved tensors, no amax histories.

fp8_delayed at inference: delayed scaling exists to avoid an extra pass over tensors that
change every training step. A generator has no amax history (the trainer's belongs to the
trainer: sharing it would be sharing state across engines), and its weights are frozen between
refits, so their exact amax is free to compute once. So `fp8_delayed` runs as current
(per-tensor) scaling of the weights at refit and of the activations per call, keeping the
recipe's formats and margin: how inference engines quantize a high-precision checkpoint on the
fly (e.g. vLLM's dynamic FP8: weight scales at load, activation scales per call).

Per-tensor activation scales (tensorwise, delayed) see every row of the GEMM: a sequence's
numerics then depend on its batch-mates, and a one-token decode step quantizes with a
different scale than the full forward that scores the same token. Row-, tile- and block-wise
scales are per token, hence batch-invariant; that difference shows in the mismatch metrics.

The GEMM is bench.precision.gemm.scaled_gemm, the trainer's dispatcher. Where it multiplies
dequantized operands (tile/block scales, W8A16) the dequantized weight is computed once per
refit and reused (emulation buys speed with memory here; a real kernel keeps only the bytes).
Output: the autocast dtype when autocast is on (bf16 for FP8 recipes), else the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.precision.gemm import scaled_gemm
from bench.precision.quantize import Quantized, quantize
from bench.precision.recipes import get_recipe


class InferenceLinear(nn.Module):
    """y = x Wᵀ (+ b) with W stored quantized (at `load_weight`) and x quantized per call (W8A8)
    or left in the compute dtype (weights_only, W8A16). A bias (Qwen2's q/k/v projections) stays
    in high precision, as inference engines keep it, and is added to the GEMM's output; it is a
    persistent buffer, so the generator's refit copies it like any other non-quantized state."""

    def __init__(self, in_features: int, out_features: int, recipe, name: str = "", weights_only: bool = False,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.recipe, self.weights_only = get_recipe(recipe), bool(weights_only)
        self._w: Quantized | None = None
        self._w_hat: torch.Tensor | None = None  # fp32 x̂_W, where the GEMM runs on dequantized operands
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self.weight_loads = 0  # how many times the weight was quantized (once per refit)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str = "", weights_only: bool = False) -> "InferenceLinear":
        mod = cls(linear.in_features, linear.out_features, recipe, name, weights_only, device=linear.weight.device)
        keep_bias(mod, linear)
        mod.load_weight(linear.weight)
        return mod

    @property
    def qweight(self) -> torch.Tensor:
        return self._w.data

    @property
    def w_scale(self) -> torch.Tensor:
        return self._w.scale

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantize a new weight [out, in] (from refit) into fresh tensors: the trainer's weight is
        read, never kept. No history argument: fp8_delayed is current scaling (with margin)."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{self.name}: weight {tuple(w.shape)} != {(self.out_features, self.in_features)}")
        q = quantize(w.detach().to(self._device, torch.float32), self.recipe, "weight")
        self._w = Quantized(q.data, q.scale, q.tile, q.fmt)
        # x̂_W is only needed where the dispatcher cannot run _scaled_mm on the FP8 bytes: scales
        # that vary along K (the weight's tile is then neither the whole tensor nor a whole row;
        # the activation's granularity matches the weight's in every recipe), or W8A16.
        factors = not self.weights_only and (q.tile is None or q.tile == (1, self.in_features))
        self._w_hat = None if factors else q.dequantize()
        self.weight_loads += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def gemm(x2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
            a = x2 if self.weights_only else quantize(x2, self.recipe, "input")
            return scaled_gemm(a, self._w, out_dtype=out_dtype, b_hat=self._w_hat)
        return inference_forward(self, x, gemm)

    def extra_repr(self) -> str:
        r = self.recipe
        kind = "W8A16" if self.weights_only else "W8A8"
        return f"{self.in_features}, {self.out_features}, recipe={r.name} ({kind} {r.scaling})"


def keep_bias(mod: nn.Module, linear: nn.Linear) -> None:
    """A generator linear keeps `linear`'s bias (Qwen2's q/k/v) in fp32 as a persistent buffer, so
    the refit copies it like any other non-quantized state; inference engines keep biases in
    high precision."""
    if linear.bias is not None:
        mod.register_buffer("bias", linear.bias.detach().clone().float())


def inference_forward(mod: nn.Module, x: torch.Tensor, gemm) -> torch.Tensor:
    """The frame of every generator linear (FP8 and FP4): activations in the autocast dtype (bf16:
    what the trainer's engine quantizes from too), `gemm(x2d, out_dtype)` outside autocast, then
    the bias added in the output dtype."""
    dev = x.device.type
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    x = x.to(out_dtype)
    shape = x.shape
    with torch.autocast(dev, enabled=False):
        y = gemm(x.reshape(-1, shape[-1]), out_dtype)
        if getattr(mod, "bias", None) is not None:
            y = y + mod.bias.to(out_dtype)
    return y.reshape(*shape[:-1], mod.out_features)
