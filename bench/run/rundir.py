"""The run directory (DESIGN.md §4): the durable record of a run, written as it happens.

  config.yaml    fully resolved config          metrics.jsonl  one object per logged step
  events.jsonl   numerics events                evals.jsonl    one object per evaluation
  summary.json   status, final/best metrics, engines, versions, device, wall time
  checkpoints/   resumable state

JSONL lines are flushed and fsync'd per write, and summary.json is replaced atomically, so a
crash (or SIGKILL) loses at most the step in flight. wandb only mirrors these files.

One run dir, one writer: `prepare` takes an advisory lock (bench/core/lock.py) that the session
releases when it finishes. Resume reads as one run: every checkpoint records how many bytes each
JSONL file held when it was written (`jsonl_sizes`), and `cut_back` truncates the files to those
sizes on resume, moving what a crashed segment wrote after its last checkpoint to a side file
`<name>.cut-<stamp>` (never silently dropped), so no step appears twice.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from bench.core import atomic

from bench.core import lock as runlock
from bench.config.rundir_checks import failed_start
from bench.core.errors import BadInput
from bench.core.jsonl import JsonlWriter, jsonable  # noqa: F401  (JsonlWriter: the run dir's writer)

FILES = ("config.yaml", "metrics.jsonl", "events.jsonl", "evals.jsonl", "summary.json")
JSONL = ("metrics.jsonl", "events.jsonl", "evals.jsonl", "samples.jsonl", "attribution.jsonl")


# One atomic-write helper for the whole package (bench/core/atomic.py); the old local copy here also
# swallowed write errors.
atomic_write_text = atomic.write_text


def prepare(run_dir: str | Path, resume: bool) -> Path:
    """Create (or, with resume, reopen) a run dir and lock it for this process (runlock.acquire).
    Never overwrites a non-empty dir without resume."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise BadInput(f"run_dir={path} exists and is not a directory")
    if path.is_dir():
        runlock.acquire(path)  # a live writer is refused before anything else is said about the dir
    if not resume and failed_start(path):
        clear_failed_start(path)
    nonempty = path.is_dir() and any(p.name != runlock.LOCK_NAME for p in path.iterdir())
    if resume:
        if not (path / "checkpoints").is_dir() or not any((path / "checkpoints").glob("step_*.pt")):
            raise BadInput(f"resume=true but run_dir={path} has no checkpoint under checkpoints/; "
                           f"valid: a run dir written by an earlier run, or resume=false")
    elif nonempty:
        raise BadInput(f"run_dir={path} already holds a run; pass resume=true to continue it "
                       f"or choose another run_dir (runs are never overwritten)")
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    runlock.acquire(path)
    return path


def clear_failed_start(path: Path) -> None:
    """Remove what a start that completed no step left (rundir_checks.failed_start): the rerun
    starts from an empty dir. Only the harness's own file names are ever removed; our lock stays."""
    removed = [p.name for p in path.iterdir() if p.name != runlock.LOCK_NAME]
    for p in path.iterdir():
        if p.name == "checkpoints":
            p.rmdir()  # empty: failed_start checked
        elif p.name != runlock.LOCK_NAME:
            p.unlink()
    if removed:
        print(f"run_dir={path} held only a failed start (no completed step): removed {', '.join(sorted(removed))} "
              f"and starting afresh", flush=True)


def jsonl_sizes(run_dir: Path) -> dict[str, int]:
    """Bytes in each run-dir JSONL file now (all of it flushed: JsonlWriter flushes per line)."""
    return {name: (Path(run_dir) / name).stat().st_size for name in JSONL if (Path(run_dir) / name).is_file()}


def cut_back(run_dir: Path, sizes: dict[str, int], stamp: str) -> dict[str, int]:
    """Truncate each JSONL file to the size recorded at the checkpoint being resumed; the bytes
    after it (lines of steps that will run again, and a torn last line from a SIGKILL) are appended
    to `<name>.cut-<stamp>`. A file the checkpoint did not know holds only later lines: all of it
    is cut. Returns {file: bytes cut} for the files that had any."""
    cut = {}
    for name in JSONL:
        f = Path(run_dir) / name
        if not f.is_file():
            continue
        keep = sizes.get(name, 0)
        data = f.read_bytes()
        if len(data) <= keep:
            continue
        side = f.with_name(f"{name}.cut-{stamp}")
        with open(side, "ab") as out:
            out.write(data[keep:])
            out.flush()
            os.fsync(out.fileno())
        with open(f, "r+b") as fh:  # the side copy is durable before the original shrinks
            fh.truncate(keep)
            os.fsync(fh.fileno())
        cut[name] = len(data) - keep
    return cut


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchao", "transformer_engine", "hydra", "wandb"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional or broken installs are recorded as absent
            out[mod] = None
    return out


def device_string(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}{bf16_note()})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_note() -> str:
    """CPU bf16 speed hinges on native bf16 dot products (AVX512-BF16 or AMX): without them a
    bf16 GEMM is emulated and can be 10x slower than fp32, which flips every ratio to bf16."""
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return ""
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return f", native bf16: {'+'.join(native)}" if native else ", no native bf16 (emulated)"


def write_summary(path: Path, summary: dict) -> None:
    atomic_write_text(Path(path) / "summary.json", json.dumps(summary, indent=2, default=jsonable) + "\n")


def read_summary(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
