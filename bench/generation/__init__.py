"""The generator: a separate rollout sampler with its own weights, precision and KV cache.

  generator.py  Generator (refit from the trainer, generate rollouts, score tokens), Rollout
  kvcache.py    KVCache, in the compute dtype or FP8 (E4M3) with static per-head scales
  kernels.py    KernelConfig: the generator's kernels, exact (the trainer's ops) or as an inference
                engine runs them (DESIGN §11), one switch per source
  replay.py     replay(): the generator's computation of given tokens, hidden states included
Its precision is planned by bench.precision.plan (side="generator", the `inference` engine).
"""
from bench.generation.generator import Generator, Rollout, sample_step, truncate_logits
from bench.generation.kvcache import KVCache

__all__ = ["Generator", "Rollout", "KVCache", "sample_step", "truncate_logits"]
