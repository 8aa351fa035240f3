"""What a step costs: phase timing, energy counters, and the report's time/energy figures.

  timing.py  PhaseTimer: `time/<phase>_s` and `_frac` per step, the module-level `phase` context
  energy.py  EnergyMeter: NVML or RAPL joules per step, or why they are unavailable
  cost.py    per-run time/energy figures and a variant's change against the baseline (no torch)

Instrumentation, low in the import order (core only) so that generation, train and run can all
time themselves. The benchmarks that *use* it (throughput, monitor overhead) are bench/benchmarks.
"""
