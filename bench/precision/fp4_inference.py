"""FP4 linear for the generator: W4A4 (FP4 weights and activations) or W4A16 (`weights_only`: FP4
weights, activations in the compute dtype, the quantization-aware-rollout setting of verl and
NeMo-RL), the FP4 counterpart of bench/generation/fp8_inference.py.

  weights      quantized once per refit (`load_weight`) with the recipe's weight tiling: nvfp4
               16x16 tiles by default, the same x̂_W the trainer's FP4 forward uses, so a W4A16
               rollout differs from the trainer only by its activations; `weight_2d: false`
               gives the 1x16-along-K blocks of NVFP4 inference checkpoints (ModelOpt / vLLM);
               mxfp4 1x32 along K. The global nvfp4 scale comes from the weight's own amax.
  activations  W4A4: quantized per call, 1x16 (nvfp4) / 1x32 (mxfp4) along K with the global
               scale of this call's activation tensor, from the dtype they live in (bf16 under
               autocast). Per-block scales are per token, but the nvfp4 *global* scale sees the
               whole batch: a token's numerics depend on its batch-mates through g, and a
               one-token decode step uses a different g than the full forward scoring it. That
               is what the hardware does too, and it shows in the mismatch metrics.
               W4A16: not quantized.
  no backward  round to nearest even everywhere: no stochastic rounding, no Hadamard transform.
The GEMM multiplies dequantized fp32 operands (emulation: the dequantized weight is kept from
refit); real FP4 GEMMs need Blackwell and are not wired in (engines.register_converters refuses them).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.precision.fp4 import FP4Recipe, fake_quantize_fp4, get_fp4_recipe
from bench.precision.inference import inference_forward, keep_bias


class FP4InferenceLinear(nn.Module):
    """y = x̂ · x̂_Wᵀ (+ b) with x̂_W quantized at `load_weight` and x̂ per call (unless weights_only)."""

    def __init__(self, in_features: int, out_features: int, recipe="nvfp4", name: str = "",
                 weights_only: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.recipe: FP4Recipe = get_fp4_recipe(recipe)
        self.weights_only = bool(weights_only)
        self.register_buffer("w_dequant", torch.empty(0, device=device), persistent=False)
        self.weight_loads = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str = "", weights_only: bool = False) -> "FP4InferenceLinear":
        mod = cls(linear.in_features, linear.out_features, recipe, name, weights_only, device=linear.weight.device)
        keep_bias(mod, linear)
        mod.load_weight(linear.weight)
        return mod

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantize a new weight [out, in] (from refit); the trainer's tensor is only read."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{self.name}: weight {tuple(w.shape)} != {(self.out_features, self.in_features)}")
        self.w_dequant = fake_quantize_fp4(w.detach().to(self.w_dequant.device, torch.float32), self.recipe, "weight")
        self.weight_loads += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def gemm(x2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
            x2 = x2.float()
            if not self.weights_only:
                x2 = fake_quantize_fp4(x2, self.recipe, "input")
            return (x2 @ self.w_dequant.t()).to(out_dtype)
        return inference_forward(self, x, gemm)

    def extra_repr(self) -> str:
        mode = "W4A16" if self.weights_only else "W4A4"
        return f"{self.in_features}, {self.out_features}, recipe={self.recipe.name} ({mode}, weight_2d={self.recipe.weight_2d})"
