"""RL: GRPO loss, trainer/generator mismatch metrics, importance-sampling correction.

  grpo.py, update.py       the GRPO config, advantages, and the PPO-style update loop
  batch.py, rollout_shards.py, truncation.py   the typed rollout batch, its split over ranks, length caps
  mismatch.py              `mismatch/*` (DESIGN §6, §10)        importance.py   `is/*` and IS weights
  warmstart.py             the cached supervised warm start     plots.py        worst-sequence PNGs

Imports train, models, core. The generator (bench/generation) sits above it.
"""
