"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The one recipe, used for summary.json, baselines, checkpoints and their checksums:
  1. write into a temp file created in the target's own directory (same filesystem, so step 3 is
     a rename, not a copy), named `.<name>.<random>` so a glob for the target never matches it;
  2. flush Python's buffer and fsync, so the bytes are on disk before the name points at them
     (without it a power loss after the rename can leave an empty file under the final name);
  3. os.replace onto the target, which POSIX makes atomic (and Windows too for same-volume files).
On any failure (including KeyboardInterrupt) the temp file is removed and the target untouched.

`write_with(path, fn)` takes a callback that writes to a binary file object, so torch.save (or
anything streaming) goes through the same path without this module importing torch:
    write_with(ckpt, lambda f: torch.save(state, f))
Torch-free on purpose: the report and gate tools use it where torch is not installed.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_with(path, fn: Callable[[IO[bytes]], None]) -> Path:
    """Atomically replace `path` with whatever `fn(f)` writes to the binary file object `f`.
    Creates missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return write_with(path, lambda f: f.write(data))


def write_text(path, text: str) -> Path:
    """UTF-8 text, written as is (no newline translation, so the bytes are the same everywhere)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **dump_kw) -> Path:
    """`json.dumps(obj, **dump_kw)` plus a final newline (a text file ends with one)."""
    return write_text(path, json.dumps(obj, **dump_kw) + "\n")
