"""Append-only JSONL that survives a crash: each line flushed and fsync'd as it is written (DESIGN §4).
Non-finite floats become JSON-legal values (NaN -> null, ±inf -> ±1e308), so every line parses."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def jsonable(v):
    if hasattr(v, "item") and not isinstance(v, (int, float)):  # a 0-d tensor or numpy scalar
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class JsonlWriter:
    """Append-only JSONL, flushed and fsync'd per line (non-finite floats become null)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self.f.write(json.dumps({k: jsonable(v) for k, v in record.items()}) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        self.f.close()
