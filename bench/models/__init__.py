"""Model kinds: one place that builds the policy network, whatever it is.

    build_model(cfg, device)        the trainer's model (random init under the global seed, or a
                                    local checkpoint's weights for model=hf model.path=DIR)
    meta_model(cfg)                 names and shapes only (the validation pass: free at any size)
    empty_model(cfg, device)        the generator's own copy: zeros until refit, derived buffers
                                    (RoPE tables) recomputed
    new_kv_cache(cfg, batch, ...)   the generator's KV cache for this model's attention shape
    resolve(cfg)                    fill a model=hf model.path config's sizes from its config.json
    load_tokenizer(cfg)             the checkpoint's tokenizer (model.path), else None (task's own)

Kinds: `builtin` (bench.models.decoder.Transformer) and `hf` (a transformers causal LM behind an adapter,
bench/models/hf.py). Both present one interface, which every other part of the harness codes
against: forward(idx, cache=None, pos=0) -> fp32 logits, `.layers` (the decoder blocks: FSDP2's
per-block wrap and the planner's first/last-N-layer selection iterate it), `.embed`, `.norm`,
`.lm_head`, `.cfg`, `.reset_parameters()`, and nn.Linear projections under `layers.<i>.…`.

  decoder.py  the built-in decoder        hf.py      the transformers adapter
  kvcache.py  the KV cache both kinds' forward takes (the generator's, compute dtype or FP8)
  lm_loss.py  the masked next-token cross-entropy every LM loss is made of
Imports precision, tasks (tokenizers), core.
"""
from __future__ import annotations

import torch

from bench.core.errors import BadInput
from bench.models.decoder import ModelConfig, Transformer, rope_tables

KINDS = ("builtin", "hf")


def kind_of(cfg) -> str:
    kind = getattr(cfg, "kind", "builtin")
    if kind not in KINDS:
        raise BadInput(f"model.kind={kind!r}; valid: {', '.join(KINDS)}")
    return kind


def resolve(cfg: ModelConfig) -> ModelConfig:
    """The config with every size the run needs filled in (model.path: from the checkpoint)."""
    if kind_of(cfg) == "hf":
        from bench.models.hf import resolve_hf
        return resolve_hf(cfg)
    return cfg


def load_tokenizer(cfg):
    """A model=hf model.path checkpoint's tokenizer (wrapped for the tasks), else None: the task
    keeps its own character tokenizer."""
    if kind_of(cfg) == "hf" and cfg.path:
        from bench.tasks.hf_tokenizer import HFTokenizer
        from bench.models.hf import load_hf_tokenizer
        from bench.models.hf_checks import check_vocab

        tok = load_hf_tokenizer(cfg.path)
        check_vocab(cfg.path, len(tok), cfg.vocab_size)  # an id past the embedding is an IndexError mid-run
        return HFTokenizer(tok, chat_template=cfg.chat_template)
    return None


def build_model(cfg: ModelConfig, device="cpu") -> torch.nn.Module:
    """The trainer's model on `device` (draws its random init from the global RNG, as Transformer)."""
    if kind_of(cfg) == "hf":
        from bench.models.hf import HFCausalLM
        return HFCausalLM.build(cfg).to(device)
    return Transformer(cfg).to(device)


def meta_model(cfg: ModelConfig) -> torch.nn.Module:
    """Names and shapes without storage (no checkpoint is read)."""
    with torch.device("meta"):
        if kind_of(cfg) == "hf":
            from bench.models.hf import HFCausalLM
            return HFCausalLM.build(cfg, load_weights=False)
        return Transformer(cfg)


def empty_model(cfg: ModelConfig, device) -> torch.nn.Module:
    """The generator's own copy, built on the meta device (no random init and no draw from the
    caller's RNG: refit overwrites every weight), then given zeroed storage on `device`. Derived
    buffers are recomputed on CPU, where and how the trainer's model computes them, then moved:
    CPU and CUDA RoPE tables can differ in the last bit, and bitwise parity needs the same."""
    model = meta_model(cfg).to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty may swap in new Parameters per module, untying them
        model.lm_head.weight = model.embed.weight
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()
        if isinstance(model, Transformer):
            cos, sin = rope_tables(cfg)
            model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
        else:
            model.recompute_buffers(device)
    return model.eval().requires_grad_(False)


def new_kv_cache(cfg: ModelConfig, batch: int, max_len: int, dtype, device, fp8: bool = False,
                 headroom: float = 1.0, scales: str = "per_head", store=None):
    """A KV cache shaped for this model's attention: n_kv_heads (GQA) key/value heads of
    head_dim each. The HF adapter writes into the same KVCache (its layers call update()), so the
    FP8 cache (quantize on write, static scales: `scales` and `store` as KVCache) works on both kinds."""
    from bench.models.kvcache import KVCache  # here: bench.generation imports this package

    heads = getattr(cfg, "n_kv_heads", 0) or cfg.n_heads
    return KVCache(cfg.n_layers, batch, heads, max_len, cfg.d_model // cfg.n_heads, dtype, device,
                   fp8=fp8, headroom=headroom, scales=scales, store=store)


__all__ = ["KINDS", "Transformer", "build_model", "empty_model", "load_tokenizer", "meta_model", "new_kv_cache",
           "resolve"]
