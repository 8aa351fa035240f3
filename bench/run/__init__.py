"""The run's lifecycle: what every recipe does around its loop (DESIGN §4).

  session.py     Session: validate once, open the run dir, log, emit events, checkpoint, summarise
  rundir.py      the run directory's files, written as they happen (config, JSONL, summary.json)
  logger.py      one logger, three sinks: the run dir's JSONL, the console, wandb
  entrypoint.py  what the recipe entry points share before Hydra composes (CLI override checks)

Imports config (the one validation pass), train (process group, checkpoints), models, numerics,
perf, precision, core. Nothing below it imports run: the lower layers take an `emit` callable
and a writer, never the session.
"""
