"""Resumable checkpoints, written atomically with a checksum.

A checkpoint is one `torch.save` blob (model incl. FP8 amax-history buffers, optimizer,
scheduler, loss scaler, RNG states, monitor windows, step, best metrics) written to a temp file,
fsync'd, renamed to `step_<n>.pt`, and accompanied by `step_<n>.pt.sha256`. Loading verifies the
digest first: a truncated or corrupted file is refused with one clear line, never half-loaded.
"""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BadInput
from bench.core import atomic


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_file(path: Path, state: dict) -> Path:
    """torch.save `state` to `path` atomically (temp + fsync + rename) with a .sha256 beside it."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic.write_bytes(path, data)
    atomic.write_text(path.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest() + "\n")
    return path


def save(ckpt_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write checkpoints/step_<n>.pt and keep only the newest `keep` checkpoints."""
    ckpt_dir = Path(ckpt_dir)
    path = save_file(ckpt_dir / f"step_{step:07d}.pt", state)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


def latest(ckpt_dir: Path) -> Path | None:
    found = sorted(Path(ckpt_dir).glob("step_*.pt"))
    return found[-1] if found else None


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path} does not exist")
    digest_file = path.with_suffix(".pt.sha256")
    if not digest_file.is_file():
        raise BadInput(f"checkpoint {path} has no checksum file {digest_file.name}; refusing to load it")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
        raise BadInput(f"checkpoint {path} is corrupted or truncated (sha256 mismatch); "
                       f"delete it to resume from an earlier one")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:
        raise BadInput(f"checkpoint {path} cannot be read ({type(e).__name__})") from None
