"""Leaf utilities every package may use; imports nothing from bench and nothing heavier than the stdlib.

  errors.py  BadInput: a user mistake is one line on stderr and exit 2, never a traceback (DESIGN §8)
  events.py  Event, the one events.jsonl record and its kinds (DESIGN §7)
  atomic.py  atomic file writes (temp file, fsync, rename): summary.json, checkpoints, baselines
  jsonl.py   JsonlWriter: append-only JSONL flushed and fsync'd per line (metrics, events, evals, ...)
  lock.py    the one-writer flock on <run_dir>/.lock

Layer 0 of the import order in bench/__init__.py.
"""
