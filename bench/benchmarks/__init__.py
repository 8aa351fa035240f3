"""Benchmarks: speed and overhead ratios measured side by side in one process (never timed tests).

  throughput.py  `python -m bench.benchmarks.throughput`: train-step tokens/s, MFU, memory and decode
                 tokens/s per precision, as "x of bf16 throughput"
  overhead.py    `python -m bench.benchmarks.overhead`: the numerics monitor's cost on vs off

The top of the import order: they build whole models, trainers and generators the way the recipes do.
"""
