"""The generator: a separate rollout sampler with its own weights, precision and KV cache.

  generator.py  Generator (refit from the trainer, generate rollouts, score tokens), Rollout
  attribution.py  where along the network the two sides part ways (DESIGN §11)
  ablation.py   which mismatch source explains how much of the disagreement (recipes/attribute.py)
  kernels.py    KernelConfig: the generator's kernels, exact (the trainer's ops) or as an inference
                engine runs them (DESIGN §11), one switch per source
  replay.py     replay(): the generator's computation of given tokens, hidden states included
  backend.py    generator.backend native | vllm: build_generator / close_generator (DESIGN §13)
  vllm_backend.py  VLLMGenerator: a real vLLM engine behind the Generator interface
  vllm_client.py, vllm_worker.py  that engine's process (its own venv) and the socket protocol
Its precision is planned by bench.precision.plan (side="generator", the `inference` engine); its
KV cache is bench.models.kvcache (the models' forward takes it). Imports rl (the mismatch metrics
the ablation scores with), models, precision, perf, core.
"""
from bench.generation.generator import Generator, Rollout, sample_step, truncate_logits
from bench.generation.backend import build_generator, close_generator
from bench.models.kvcache import KVCache

__all__ = ["Generator", "Rollout", "KVCache", "sample_step", "truncate_logits", "build_generator",
           "close_generator"]
