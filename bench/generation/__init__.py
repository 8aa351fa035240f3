"""The generator: a separate rollout sampler with its own weights, precision and KV cache.

  generator.py  Generator (refit from the trainer, generate rollouts, score tokens), Rollout
  kvcache.py    KVCache, in the compute dtype or FP8 (E4M3) with static per-head scales
Its precision is planned by bench.precision.plan (side="generator", the `inference` engine).
"""
from bench.generation.generator import Generator, Rollout, sample_step, truncate_logits
from bench.generation.kvcache import KVCache

__all__ = ["Generator", "Rollout", "KVCache", "sample_step", "truncate_logits"]
