"""A small decoder-only transformer: the thing whose numerics we measure.

Token embedding -> N x [RMSNorm -> causal attention (RoPE, optional QK-norm) -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> lm_head.

Every projection is an `nn.Linear` built through `linear()` and reachable under a stable dotted
name (`layers.3.attn.q`, `layers.3.mlp.up`, `lm_head`). Precision engines never touch this file:
they swap those modules by name after construction (bench/precision/engines.py), which is why
the names are part of the contract and why nothing here calls `F.linear` on raw weights.

The forward optionally takes a KV cache (bench/models/kvcache.py) so the generator engine can
decode incrementally with its own copy of the model; with no cache, it is the trainer's forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.norms import engine_rms_norm
from bench.models.splitkv import flash_splits


@dataclass
class ModelConfig:
    """The `model` config group's schema; its defaults are the tiny model (conf/model/tiny.yaml
    names it, the other model files set their own dims). Dims are multiples of 128 so every FP8
    recipe (1x128 / 128x128 blockwise tiles, 1x32 MX blocks) tiles them exactly."""
    name: str = "tiny"
    vocab_size: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 384
    max_seq_len: int = 96
    qk_norm: bool = False
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def validate(self) -> str | None:
        """A reason this config cannot build a model, or None."""
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, field) <= 0:
                return f"model.{field}={getattr(self, field)} must be positive; valid: an integer >= 1"
        if self.d_model % self.n_heads:
            return (f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                    f"valid: a d_model that is a multiple of n_heads")
        if (self.d_model // self.n_heads) % 2:
            return (f"head dim model.d_model/model.n_heads={self.d_model // self.n_heads} must be even for RoPE; "
                    f"valid: an even d_model/n_heads")
        return None


def linear(in_features: int, out_features: int) -> nn.Linear:
    """The one Linear factory. Bias-free, as in modern LMs (and so FP8 GEMMs carry no bias)."""
    return nn.Linear(in_features, out_features, bias=False)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_seq_len, head_dim/2] in fp32: rotary phases are precision-critical."""
    hd = cfg.d_model // cfg.n_heads
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
    t = torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [B, H, T, hd]; rotates pairs (x1, x2) = halves of the head dim, computed in fp32, or in
    `dtype` (the generator kernel switch rope_in_compute_dtype: x and the tables rounded to it)."""
    dt = torch.float32 if dtype is None else dtype
    x1, x2 = x.to(dt).chunk(2, dim=-1)
    cos, sin = cos[None, None].to(dt), sin[None, None].to(dt)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with the reduction in fp32 even under bf16/fp16 autocast (mean of squares of
    fp16 activations overflows long before the activations themselves do). On the generator,
    `reduce_dtype` (kernel switch norm_in_compute_dtype) selects an engine's rounding points in
    that dtype, `norm_kernel` which engine (bench/models/norms.py, vLLM's files named there)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.reduce_dtype: torch.dtype | None = None  # generator kernel norm_in_compute_dtype
        self.norm_kernel = "vllm_native"              # generator kernel norm_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce_dtype is not None:
            return engine_rms_norm(x, self.weight, self.eps, self.reduce_dtype, self.norm_kernel)[0]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + delta), x + delta): the residual add and the norm that reads it, fused as
        vLLM's decoder layers call it (`input_layernorm(hidden_states, residual)`). The trainer
        (reduce_dtype None) adds in torch's promoted dtype and normalizes the sum; an engine
        kernel keeps the residual stream in the compute dtype and rounds where its file does.
        delta None (the first block): a plain norm of x, which stays the residual."""
        if delta is None:
            return self(x), x
        if self.reduce_dtype is None:
            z = x + delta
            return self(z), z
        return engine_rms_norm(delta, self.weight, self.eps, self.reduce_dtype, self.norm_kernel, residual=x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, d // cfg.n_heads
        self.q, self.k, self.v, self.o = (linear(d, d) for _ in range(4))
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        # Generator kernel hooks (bench/generation/kernels.py); None / 0 = the trainer's ops.
        self.rope_dtype: torch.dtype | None = None
        self.kv_chunk = 0  # > 0: flash-decoding attention with chunks of this many keys
        self.kv_sms = 0    # > 0 (batch_invariant=false): split count from FlashAttention's heuristic

    def forward(self, x, cos, sin, cache=None, pos: int = 0):
        B, T, _ = x.shape
        heads = lambda t: t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin, self.rope_dtype), apply_rope(k, cos, sin, self.rope_dtype)
        if self.kv_chunk:
            if cache is not None:
                k, v = cache.update(k, v, pos)
            splits = flash_splits(B, self.n_heads, T, k.shape[2], self.kv_chunk, self.kv_sms) if self.kv_sms else None
            y = split_kv_attention(q, k.to(q.dtype), v.to(q.dtype), pos, self.kv_chunk, splits)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.update(k, v, pos)  # all keys/values up to pos + T
            if T == 1:  # one new token attends to every cached position
                y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
            else:  # a prefill chunk starting at pos: causal within the chunk, full to the past
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos)
                y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


def split_kv_attention(q, k, v, pos: int, chunk: int, splits: int | None = None) -> torch.Tensor:
    """Causal attention as flash-decoding computes it. q [B,H,T,d] at positions pos..pos+T-1,
    k/v [B,H,L,d] at 0..L-1. Keys are cut in blocks of `chunk`, the blocks in `splits` contiguous
    splits of ceil(blocks / splits) blocks (None: one split per block, the fixed-chunk scheme).
    Within a split, FlashAttention's online softmax in fp32, block by block: s = q·k/√d,
    m' = max(m, max s), p = exp(s − m'), acc = acc·e^(m−m') + (p rounded to the compute dtype)·v,
    l = l·e^(m−m') + Σp (FlashAttention feeds P to its second GEMM in bf16/fp16); the split's
    o = acc / l, lse = m + log l. The splits combine as o = Σ_c exp(lse_c − LSE) o_c with
    LSE = log Σ_c exp(lse_c) in fp32 (flash_fwd_combine). Returns [B,H,T,d] in q's dtype."""
    T, L, d = q.shape[2], k.shape[2], q.shape[-1]
    qf = q.float() / math.sqrt(d)
    allowed = torch.arange(L, device=q.device)[None, :] <= (pos + torch.arange(T, device=q.device))[:, None]
    n_blocks = math.ceil(L / chunk)
    per = 1 if splits is None else math.ceil(n_blocks / max(1, min(splits, n_blocks)))
    outs, lses = [], []
    for b0 in range(0, n_blocks, per):
        m = l = acc = None
        for c0 in range(b0 * chunk, min((b0 + per) * chunk, L), chunk):
            s = qf @ k[:, :, c0:c0 + chunk].float().transpose(-1, -2)
            s = s.masked_fill(~allowed[:, c0:c0 + chunk], float("-inf"))
            m_new = s.amax(-1, keepdim=True) if m is None else torch.maximum(m, s.amax(-1, keepdim=True))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # fully masked so far
            p = torch.exp(s - m_safe)
            pv = p.to(q.dtype).float() @ v[:, :, c0:c0 + chunk].float()
            if m is None:
                l, acc = p.sum(-1, keepdim=True), pv
            else:
                alpha = torch.exp(torch.where(torch.isfinite(m), m, m_safe) - m_safe)
                l, acc = l * alpha + p.sum(-1, keepdim=True), acc * alpha + pv
            m = m_new
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        outs.append(acc / l.clamp(min=1e-30))
        lses.append(torch.where(l > 0, m_safe + torch.log(l.clamp(min=1e-30)), torch.full_like(l, float("-inf"))))
    lse = torch.stack(lses)  # [C, B, H, T, 1]
    w = torch.softmax(lse, dim=0)
    return (w * torch.stack(outs)).sum(0).to(q.dtype)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = linear(cfg.d_model, cfg.d_ff)
        self.up = linear(cfg.d_model, cfg.d_ff)
        self.down = linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, cache=None, pos: int = 0, sites: dict | None = None, i: int = 0, delta=None):
        """(residual, mlp output): the MLP output is added to the residual by the next norm
        (RMSNorm.add_forward, the fused add+norm of inference engines); delta is the previous
        block's MLP output (None for block 0). Records layers.<i-1>.mlp, the sum it completes."""
        h, x = self.attn_norm.add_forward(x, delta)
        if sites is not None and delta is not None:
            sites[f"layers.{i - 1}.mlp"] = x
        h, x = self.mlp_norm.add_forward(x, self.attn(h, cos, sin, cache, pos))
        if sites is not None:
            sites[f"layers.{i}.attn"] = x
        return x, self.mlp(h)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = linear(cfg.d_model, cfg.vocab_size)
        self.lm_head_fp32 = False  # top-level lm_head_fp32: LM head GEMM and logits in fp32 (both sides)
        cos, sin = rope_tables(cfg)
        # Non-persistent: derived from the config, so never a checkpoint mismatch.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self):
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 style: residual-branch outputs scaled down by depth.
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o.weight", "down.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, idx: torch.Tensor, cache=None, pos: int = 0, sites: dict | None = None) -> torch.Tensor:
        """idx [B, T] token ids -> logits [B, T, V] (fp32). With `cache`, idx holds positions
        pos .. pos+T-1 and keys/values are appended to the cache. `sites`, a dict, receives the
        attribution sites (DESIGN §11: embed, layers.<i>.attn, layers.<i>.mlp, norm, logits)."""
        T = idx.shape[1]
        if pos + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T]
        x, delta = self.embed(idx), None
        if sites is not None:
            sites["embed"] = x
        for i, block in enumerate(self.layers):
            x, delta = block(x, cos, sin, None if cache is None else cache.layer(i), pos, sites, i, delta)
        h, x = self.norm.add_forward(x, delta)
        if sites is not None and delta is not None:
            sites[f"layers.{len(self.layers) - 1}.mlp"] = x
        logits = lm_head_logits(self.lm_head, h, self.lm_head_fp32)
        if sites is not None:
            sites["norm"], sites["logits"] = h, logits
        return logits


def lm_head_logits(lm_head: nn.Module, h: torch.Tensor, fp32: bool) -> torch.Tensor:
    """Logits as fp32. `fp32` (DESIGN §11 lm_head_fp32, MiniMax-M1's fix): the LM head GEMM itself
    in fp32, outside autocast; else in the autocast dtype and cast up after. Either way the
    log-softmax over the vocab, where bf16 rounding shows up as mismatch, runs in fp32."""
    if fp32:
        with torch.autocast(h.device.type, enabled=False):
            return lm_head(h.float()).float()
    return lm_head(h).float()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) under softmax(logits / T), computed in fp32. logits [B,T,V], targets [B,T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
