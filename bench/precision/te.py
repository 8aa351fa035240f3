"""The Transformer Engine engine: every ScalingRecipe knob mapped onto TE's recipe objects, or the
combination refused with one line naming the knob, before anything runs.

Mapping (transformer_engine.common.recipe; TE's own behaviour in brackets):
  formats          e4m3/e5m2 -> Format.HYBRID, e4m3/e4m3 -> Format.E4M3 [TE has no E5M2-forward
                   training]
  delayed          DelayedScaling(margin, amax_history_len, amax_compute_algo) [no power-of-two
                   option: pow2_scales refused; forward GEMM always fast-accumulates in TE, so
                   fast_accum=false is refused]
  tensorwise       Float8CurrentScaling; QParams(power_2_scale=pow2_scales, amax_epsilon=eps) for
                   each role; fast_accum -> fp8_gemm_fprop.use_split_accumulator = not fast_accum
  blockwise        Float8BlockScaling: 1x128 activation/grad tiles, 128x128 weight blocks (fixed in
                   TE: other act_block/weight_block refused); QParams(power_2_scale=pow2_scales,
                   amax_epsilon=eps) per role, i.e. our fp32-vs-pow2 choice set on the recipe
                   object rather than through NVTE_FP8_BLOCK_SCALING_FP32_SCALES; split
                   accumulation always (TE asserts it; our blockwise GEMM never fast-accumulates)
  mx               MXFP8BlockScaling: 1x32 blocks and rceil E8M0 scales, both fixed in TE
                   (mx_block != 32 or mx_scale_rounding=floor refused)
Compute capability (what TE's kernels need): per-tensor FP8 SM 8.9+; blockwise SM 9.0+ with CUDA
12.9+; MXFP8 (and NVFP4) SM 10.0+. `te_unsupported` is a pure function of the recipe, the
capability and the CUDA version, so the rules are tested on machines without TE or a GPU.
"""
from __future__ import annotations

import torch

from bench.precision.recipes import ScalingRecipe

MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mx": (10, 0), "nvfp4": (10, 0)}
MIN_CUDA = {"blockwise": (12, 9)}


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:2]) if v else (0, 0)


def te_unsupported(r: ScalingRecipe, capability: tuple[int, int] | None, cuda_version: str | None) -> str | None:
    """Why TE cannot run `r` exactly as configured on this GPU, or None. One line, naming the knob.
    capability None: the recipe alone (no device in question)."""
    if r.scaling not in MIN_CAPABILITY:
        return f"Transformer Engine has no {r.scaling} scaling (has: {', '.join(MIN_CAPABILITY)})"
    if r.fwd_format != "e4m3":
        return f"Transformer Engine trains with E4M3 forward casts only (fwd_format={r.fwd_format})"
    if r.scaling == "delayed" and r.pow2_scales:
        return "Transformer Engine DelayedScaling has no power-of-two scales (pow2_scales=true)"
    if r.scaling == "delayed" and not r.fast_accum:
        return "Transformer Engine DelayedScaling always fast-accumulates the forward GEMM (fast_accum=false)"
    if r.scaling == "blockwise" and (r.act_block, r.weight_block) != (128, 128):
        return (f"Transformer Engine Float8BlockScaling has 1x128 / 128x128 blocks only "
                f"(act_block={r.act_block}, weight_block={r.weight_block})")
    if r.scaling == "mx" and r.mx_block != 32:
        return f"Transformer Engine MXFP8 has 1x32 blocks only (mx_block={r.mx_block})"
    if r.scaling == "mx" and r.mx_scale_rounding != "rceil":
        return f"Transformer Engine MXFP8 computes rceil scales only (mx_scale_rounding={r.mx_scale_rounding})"
    need = MIN_CAPABILITY[r.scaling]
    if capability is None:
        return None
    if tuple(capability) < need:
        return (f"Transformer Engine {r.scaling} needs compute capability {need[0]}.{need[1]}+, "
                f"this GPU is {capability[0]}.{capability[1]}")
    cuda = MIN_CUDA.get(r.scaling)
    if cuda and _version(cuda_version) < cuda:
        return f"Transformer Engine {r.scaling} needs CUDA {cuda[0]}.{cuda[1]}+, this build has {cuda_version}"
    return None


def te_recipe(r: ScalingRecipe):
    """The TE recipe object for `r` (te_unsupported(r, ...) must be None)."""
    from transformer_engine.common import recipe as ter

    fmt = ter.Format.HYBRID if r.grad_format == "e5m2" else ter.Format.E4M3
    if r.scaling == "delayed":
        return ter.DelayedScaling(fp8_format=fmt, amax_history_len=r.amax_history_len,
                                  amax_compute_algo=r.amax_compute_algo, margin=r.margin)
    if r.scaling == "mx":
        return ter.MXFP8BlockScaling(fp8_format=fmt)
    out = ter.Float8CurrentScaling(fp8_format=fmt) if r.scaling == "tensorwise" else ter.Float8BlockScaling(fp8_format=fmt)
    # Instance attributes shadow TE's class-level QParams defaults (for blockwise those are read
    # from NVTE_FP8_BLOCK_SCALING_FP32_SCALES at import): our knobs win, per recipe object.
    for role in ("fp8_quant_fwd_inp", "fp8_quant_fwd_weight", "fp8_quant_bwd_grad"):
        setattr(out, role, ter.QParams(power_2_scale=r.pow2_scales, amax_epsilon=r.eps))
    if r.scaling == "tensorwise":
        out.fp8_gemm_fprop = ter.MMParams(use_split_accumulator=not r.fast_accum)
    return out


def device_facts(device: torch.device | None) -> tuple[tuple[int, int] | None, str | None]:
    """(compute capability, CUDA version) of `device`; (0, 0) off CUDA; (None, None) for no device."""
    if device is None:
        return None, None
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    return tuple(cap), torch.version.cuda


class TransformerEngine:
    """Transformer Engine modules under te.fp8_autocast with the mapped recipe; CUDA only."""
    name = "te"
    sides = ("trainer",)
    gpu = True  # a real low-precision GEMM library (the format's gpu_reason applies, engines.py)

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return "Transformer Engine needs CUDA; this device is " + device.type
        try:
            import transformer_engine.pytorch  # noqa: F401
        except Exception as e:
            return f"transformer_engine does not import ({type(e).__name__})"
        return None

    def unsupported(self, recipe: ScalingRecipe, device: torch.device | None = None, weights_only: bool = False
                    ) -> str | None:
        if weights_only:
            return "weights-only quantization is a generator setting"
        return te_unsupported(recipe, *device_facts(device))

    def convert(self, model, plan) -> None:
        import transformer_engine.pytorch as te

        for n in plan.fp8_modules:
            old = model.get_submodule(n)
            new = te.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            params_dtype=old.weight.dtype, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
            model.set_submodule(n, new)

    def context(self, recipe: ScalingRecipe):
        import transformer_engine.pytorch as te

        return te.fp8_autocast(enabled=True, fp8_recipe=te_recipe(recipe))
