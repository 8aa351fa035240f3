"""The generator's KV cache: keys/values of every past position, per layer.

Stored in the generator's compute dtype, or in FP8 (E4M3) with one scale per layer and head
fixed at prefill from the prompt's amax (the static k_scale/v_scale of inference engines).
Later tokens reuse that scale and saturate if they exceed it: the FP8 KV cache's characteristic
error, which shows up in the mismatch metrics like any other generator-side precision choice.
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0


class LayerCache:
    def __init__(self, batch, heads, max_len, head_dim, dtype, device, fp8: bool):
        self.fp8 = fp8
        store = torch.float8_e4m3fn if fp8 else dtype
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=store, device=device)
        self.v = torch.zeros_like(self.k)
        self.k_scale = self.v_scale = None
        self.dtype = dtype

    def _scale(self, x):  # per head: [1, H, 1, 1]
        amax = x.detach().float().abs().amax(dim=(0, 2, 3), keepdim=True).clamp(min=1e-12)
        return torch.full_like(amax, E4M3_MAX) / amax

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int):
        T = k.shape[2]
        if self.fp8:
            if self.k_scale is None:
                self.k_scale, self.v_scale = self._scale(k), self._scale(v)
            qk = (k.float() * self.k_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            qv = (v.float() * self.v_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            self.k[:, :, pos:pos + T], self.v[:, :, pos:pos + T] = qk, qv
            kk = self.k[:, :, :pos + T].float() / self.k_scale
            vv = self.v[:, :, :pos + T].float() / self.v_scale
            return kk.to(k.dtype), vv.to(v.dtype)
        self.k[:, :, pos:pos + T], self.v[:, :, pos:pos + T] = k, v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]


class KVCache:
    def __init__(self, n_layers, batch, heads, max_len, head_dim, dtype, device, fp8: bool = False):
        self.layers = [LayerCache(batch, heads, max_len, head_dim, dtype, device, fp8) for _ in range(n_layers)]

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]
