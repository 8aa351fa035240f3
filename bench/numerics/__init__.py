"""Watching the numbers while training: per-cast FP8/FP4 statistics, the instability policy, divergence trends.

  monitor.py     NumericsMonitor: the per-module cast stats of DESIGN §6 every `interval` steps
  policy.py      InstabilityPolicy: spikes, non-finite values, overflow -> log | skip_step | fallback | halt
  divergence.py  trend detectors (loss/grad divergence, accuracy/reward/entropy collapse)
  stress.py      the stress demo: a planted outlier that makes a cast overflow on purpose

Imports precision and core only.
"""
