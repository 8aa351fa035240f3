"""The generator's KV cache: the keys/values of every past position, per layer.

Layout: per layer, k and v buffers [B, H, max_len, head_dim], filled left to right. All prompts
of a batch have the same length (the tasks emit fixed-width prompts), so one write position
`pos` serves the whole batch and no per-sequence bookkeeping is needed.

Two storage modes:
  auto  the generator's compute dtype (fp32, or bf16/fp16 under autocast). Lossless with
        respect to what attention would have seen without a cache.
  fp8   E4M3 bytes plus one fp32 scale per (layer, head) for k and one for v. The scales are
        fixed from the prefill's amax and reused for every later token, which saturates (is
        clipped to ±448/s) when a decoded key/value exceeds the prompt's range.

Why that scale scheme: it is the static `k_scale`/`v_scale` of inference engines (vLLM, SGLang,
TensorRT-LLM): attention kernels read FP8 K/V tiles and need one dequantisation factor per
tensor (or per head) known before the kernel runs, and rescaling an already-written cache when
a larger value arrives would mean rewriting every past token. So the scale is set once, from
data (here the prefill, the first tokens the cache sees) rather than from a calibration set.
Per head rather than per layer because head norms differ by a large factor (a head with
outlier keys would otherwise waste the other heads' precision). The price is the scheme's
characteristic error: later tokens outside the prefill range saturate. `headroom` >= 1
(config `generator.kv_cache_headroom`) maps the prefill's amax to 448 / headroom, trading
resolution (log2(headroom) bits) for fewer saturations. Every layer counts the saturated
elements among those written during *decode*: the prefill fixes the scales from its own amax, so
its elements cannot saturate (amax·s <= 448 exactly, see max_over) and counting them would only
dilute the fraction by the prompt/response length ratio.

`update` returns dequantized keys/values (in the compute dtype): the arithmetic an FP8-KV
attention kernel does in registers, done here in the open so it runs on any device.
"""
from __future__ import annotations

import torch

from bench.precision.formats import FORMATS
from bench.precision.formats.fp8_scales import max_over

E4M3 = FORMATS["e4m3"]


class LayerCache:
    """One layer's keys/values. `update(k, v, pos)` writes positions pos..pos+T-1 and returns
    (k_all, v_all) holding positions 0..pos+T-1, as bench.models.decoder.Attention expects."""

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device, fp8: bool = False, headroom: float = 1.0):
        self.fp8, self.dtype, self.headroom, self.max_len = fp8, dtype, float(headroom), max_len
        store = E4M3.dtype if fp8 else dtype
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, dtype=store, device=device)
        self.v = torch.zeros_like(self.k)
        self.k_scale: torch.Tensor | None = None  # [1, H, 1, 1] fp32 multipliers (fp8 only)
        self.v_scale: torch.Tensor | None = None
        # Decode-written elements clipped to ±448, and decode elements written (fp8 only). A device
        # tensor, so counting costs no host sync per decode step.
        self.saturated = torch.zeros((), dtype=torch.long, device=device)
        self.written = 0

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """s = 448 / (headroom · amax) per head over (batch, positions, head_dim). An all-zero
        head gets s = 1 (any scale represents zeros exactly)."""
        amax = x.float().abs().amax(dim=(0, 2, 3), keepdim=True) * self.headroom
        return torch.where(amax > 0, max_over(E4M3, amax.clamp(min=1e-30)), torch.ones_like(amax))

    def _quantize(self, x: torch.Tensor, s: torch.Tensor, decode: bool) -> torch.Tensor:
        xs = x.float() * s
        if decode:
            self.saturated += (xs.abs() > E4M3.max).sum()
            self.written += xs.numel()
        # Clamp first: casting an out-of-range value to float8_e4m3fn gives NaN, not ±448.
        return xs.clamp(-E4M3.max, E4M3.max).to(E4M3.dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        if pos + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing {pos}..{pos + T - 1}")
        end = pos + T
        if not self.fp8:
            self.k[:, :, pos:end] = k
            self.v[:, :, pos:end] = v
            return self.k[:, :, :end], self.v[:, :, :end]
        decode = self.k_scale is not None
        if not decode:  # the first write (the prefill) fixes the scales for good
            self.k_scale, self.v_scale = self._scale(k), self._scale(v)
        self.k[:, :, pos:end] = self._quantize(k, self.k_scale, decode)
        self.v[:, :, pos:end] = self._quantize(v, self.v_scale, decode)
        k_all = (self.k[:, :, :end].float() / self.k_scale).to(k.dtype)
        v_all = (self.v[:, :, :end].float() / self.v_scale).to(v.dtype)
        return k_all, v_all


class KVCache:
    """Per-layer caches for one batch of sequences; `layer(i)` is what the model's forward uses.
    A cache belongs to one generate() call of one engine: never shared with the trainer, whose
    forward takes no cache at all."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device, fp8: bool = False, headroom: float = 1.0):
        self.fp8 = fp8
        self.layers = [LayerCache(batch, n_heads, max_len, head_dim, dtype, device, fp8, headroom)
                       for _ in range(n_layers)]

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def saturation_frac(self) -> float:
        """Fraction of the K/V elements written during decode that were clipped (0 for a non-FP8
        cache, or when nothing was decoded)."""
        written = sum(lc.written for lc in self.layers)
        return float(sum(lc.saturated for lc in self.layers)) / written if written else 0.0
