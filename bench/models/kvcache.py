"""The generator's KV cache: the keys/values of every past position, per layer.

Layout: per layer, k and v buffers [B, H, max_len, head_dim], filled left to right. All prompts
of a batch have the same length (the tasks emit fixed-width prompts), so one write position
`pos` serves the whole batch and no per-sequence bookkeeping is needed.

Two storage modes:
  auto  the generator's compute dtype (fp32, or bf16/fp16 under autocast). Lossless with
        respect to what attention would have seen without a cache.
  fp8   E4M3 bytes plus fp32 scales for k and v, fixed before (or at) the first write and reused
        for every later token; an element beyond the scale's range saturates to ±448.

FP8 scales, `kv_scales` (generator.kernels.kv_scales), read from vLLM (/work/notes/peer_spec.md §2):
  unit        vLLM's default: one scalar per layer, k_scale = v_scale = 1.0
              (vllm/model_executor/layers/attention/attention.py `set_default_quant_scales`;
              quantization/kv_cache.py BaseKVCacheMethod sets 1.0 when the checkpoint has none).
  calculated  vLLM `calculate_kv_scales=True` (vllm/config/cache.py; attention.py
              `maybe_calc_kv_scales`): on the engine's first forward only, one scalar per layer,
              k_scale = max|K| / 200 and v_scale = max|V| / 100 over that whole batch (all tokens,
              all heads; K_SCALE_CONSTANT / V_SCALE_CONSTANT in vllm/envs.py), then frozen: kept
              across generate() calls and refits through a KVScales held by the generator.
  per_head    one scale per (layer, head) from the prefill's amax of *each* generate() call:
              448 / (headroom · amax). The per-attention-head layout vLLM's FlashAttention backend
              accepts (csrc cache_kernels `reshape_and_cache_flash` takes [num_heads] scales;
              docs/features/quantization/quantized_kvcache.md) and FlashInfer's prefill.py
              `_split_scale_param` takes, set here from data instead of an llm-compressor
              calibration. The most accurate of the three; `headroom` (generator.kv_cache_headroom,
              >= 1) applies to it alone.
Quantization as vLLM's CUDA write path (csrc/quantization/fp8/nvidia/quant_utils.cuh
`scaled_convert`): q = e4m3_rne(clamp(fp32(x / scale), ±448)), a true fp32 divide, saturating;
dequant q · scale in fp32, then the compute dtype. per_head keeps its multiplier form x · s.

Saturation: every layer counts the elements clipped to ±448 among those written after their
scale was fixed: for per_head the decode writes (the prefill sets the scale from its own amax, so
amax·s <= 448 exactly, see max_over), for calculated everything after the first prefill, for unit
every write.

`update` returns dequantized keys/values (in the compute dtype): the arithmetic an FP8-KV
attention kernel does in registers, done here in the open so it runs on any device.
"""
from __future__ import annotations

import torch

from bench.core.errors import BadInput
from bench.precision.formats import FORMATS
from bench.precision.formats.fp8_scales import max_over

E4M3 = FORMATS["e4m3"]
KV_SCALES = ("unit", "calculated", "per_head")
K_SCALE_CONSTANT, V_SCALE_CONSTANT = 200.0, 100.0  # vllm/envs.py defaults


class KVScales:
    """The per-layer scalar (k_scale, v_scale) divisors of `calculated`, set by the first write
    each layer sees and kept for the owner's lifetime (the generator holds one: vLLM computes
    them on the engine's first forward only)."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers


class LayerCache:
    """One layer's keys/values. `update(k, v, pos)` writes positions pos..pos+T-1 and returns
    (k_all, v_all) holding positions 0..pos+T-1, as bench.models.decoder.Attention expects."""

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device, fp8: bool = False, headroom: float = 1.0, scales: str = "per_head",
                 store: KVScales | None = None, index: int = 0):
        if scales not in KV_SCALES:
            raise BadInput(f"generator.kernels.kv_scales={scales!r}; valid: {', '.join(KV_SCALES)}")
        self.fp8, self.dtype, self.headroom, self.max_len = fp8, dtype, float(headroom), max_len
        self.mode, self.store, self.index = scales, store, index
        store_dtype = E4M3.dtype if fp8 else dtype
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, dtype=store_dtype, device=device)
        self.v = torch.zeros_like(self.k)
        # per_head: [1, H, 1, 1] fp32 multipliers; unit / calculated: fp32 scalar divisors.
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None
        if fp8 and scales == "unit":
            self.k_scale = self.v_scale = torch.ones((), device=device)
        if fp8 and scales == "calculated" and store is not None and store.k[index] is not None:
            self.k_scale, self.v_scale = store.k[index], store.v[index]
        # Clipped elements among those written after the scale was fixed, and those written (fp8
        # only). A device tensor, so counting costs no host sync per decode step.
        self.saturated = torch.zeros((), dtype=torch.long, device=device)
        self.written = 0

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """per_head: s = 448 / (headroom · amax) per head over (batch, positions, head_dim). An
        all-zero head gets s = 1 (any scale represents zeros exactly)."""
        amax = x.float().abs().amax(dim=(0, 2, 3), keepdim=True) * self.headroom
        return torch.where(amax > 0, max_over(E4M3, amax.clamp(min=1e-30)), torch.ones_like(amax))

    @staticmethod
    def _calculated(x: torch.Tensor, constant: float) -> torch.Tensor:
        """calculated: max|x| / constant over the whole write, one fp32 scalar (1.0 if all zero)."""
        amax = x.float().abs().amax()
        return torch.where(amax > 0, amax / constant, torch.ones_like(amax))

    def _quantize(self, x: torch.Tensor, s: torch.Tensor, count: bool) -> torch.Tensor:
        xs = x.float() * s if self.mode == "per_head" else x.float() / s
        if count:
            self.saturated += (xs.abs() > E4M3.max).sum()
            self.written += xs.numel()
        # Clamp first: casting an out-of-range value to float8_e4m3fn gives NaN, not ±448.
        return xs.clamp(-E4M3.max, E4M3.max).to(E4M3.dtype)

    def _dequantize(self, q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (q.float() / s if self.mode == "per_head" else q.float() * s).to(dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        if pos + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing {pos}..{pos + T - 1}")
        end = pos + T
        if not self.fp8:
            self.k[:, :, pos:end] = k
            self.v[:, :, pos:end] = v
            return self.k[:, :, :end], self.v[:, :, :end]
        fixed = self.k_scale is not None
        if not fixed:  # the first write fixes the scales for good
            if self.mode == "per_head":
                self.k_scale, self.v_scale = self._scale(k), self._scale(v)
            else:
                self.k_scale = self._calculated(k, K_SCALE_CONSTANT)
                self.v_scale = self._calculated(v, V_SCALE_CONSTANT)
                if self.store is not None:
                    self.store.k[self.index], self.store.v[self.index] = self.k_scale, self.v_scale
        self.k[:, :, pos:end] = self._quantize(k, self.k_scale, fixed)
        self.v[:, :, pos:end] = self._quantize(v, self.v_scale, fixed)
        return (self._dequantize(self.k[:, :, :end], self.k_scale, k.dtype),
                self._dequantize(self.v[:, :, :end], self.v_scale, v.dtype))


class KVCache:
    """Per-layer caches for one batch of sequences; `layer(i)` is what the model's forward uses.
    A cache belongs to one generate() call of one engine: never shared with the trainer, whose
    forward takes no cache at all."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device, fp8: bool = False, headroom: float = 1.0,
                 scales: str = "per_head", store: KVScales | None = None):
        self.fp8 = fp8
        self.layers = [LayerCache(batch, n_heads, max_len, head_dim, dtype, device, fp8, headroom, scales, store, i)
                       for i in range(n_layers)]

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def saturation_frac(self) -> float:
        """Fraction of the K/V elements written after their scale was fixed that were clipped (0
        for a non-FP8 cache, or when nothing was counted)."""
        written = sum(lc.written for lc in self.layers)
        return float(sum(lc.saturated for lc in self.layers)) / written if written else 0.0
