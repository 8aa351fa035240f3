"""The generator engine: a separate inference engine with its own weights, precision, KV cache."""
from bench.generation.engine import Generator, Rollout

__all__ = ["Generator", "Rollout"]
