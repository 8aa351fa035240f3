"""Mixed-precision execution contexts: which dtype the non-FP8 ops run in.

Every precision keeps fp32 master weights and optimizer state; what changes is the compute dtype
of the forward/backward:
  fp32            everything in fp32
  bf16            torch.autocast(bf16): matmuls in bf16, reductions/softmax/norms in fp32
  fp16            torch.autocast(fp16) + dynamic loss scaling (fp16's 5-bit exponent underflows
                  small gradients; the scaler multiplies the loss, unscales the grads, skips
                  steps whose grads overflowed, and backs the scale off)
  fp8_*, mxfp8    bf16 autocast for everything the FP8 recipe does not cover (attention core,
                  norms, the modules kept in high precision); the Linears run the FP8 GEMMs.
"""
from __future__ import annotations

import contextlib

import torch

HIGH_PRECISION = ("fp32", "bf16", "fp16")


def is_fp8(name: str) -> bool:
    return name not in HIGH_PRECISION


def compute_dtype(name: str) -> torch.dtype:
    """The dtype autocast runs matmuls in for this precision (fp32 = no autocast)."""
    return {"fp32": torch.float32, "fp16": torch.float16}.get(name, torch.bfloat16)


def autocast_context(name: str, device: torch.device | str):
    """Context manager for one forward pass (+ loss) in precision `name`."""
    dtype = compute_dtype(name)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
