"""fp8bench: what low precision really costs (docs/architecture.md has the map).

Packages, in import order: each may import only the packages before it (tests/test_layout.py checks).
"""
LAYERS = ("core", "precision", "tasks", "perf", "numerics", "models", "train", "rl", "generation",
          "config", "run", "report", "benchmarks")
