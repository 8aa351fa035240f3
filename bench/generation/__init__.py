"""The generator engine: a separate inference engine with its own weights, precision, KV cache.

  engine.py         Generator (refit from the trainer, generate rollouts, score tokens), Rollout
  kvcache.py        KVCache, in the compute dtype or FP8 (E4M3) with static per-head scales
  fp8_inference.py  W8A8 FP8 Linear for inference (weights quantized once per refit)
"""
from bench.generation.engine import Generator, Rollout, sample_step, truncate_logits
from bench.generation.fp8_inference import FP8InferenceLinear, swap_linears_to_fp8
from bench.generation.kvcache import KVCache

__all__ = ["Generator", "Rollout", "KVCache", "FP8InferenceLinear", "swap_linears_to_fp8", "sample_step",
           "truncate_logits"]
