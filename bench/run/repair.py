"""Resume's honest account of a damaged run record (issue 27).

`cut_back` (bench/run/rundir.py) moves what followed the resumed checkpoint aside by byte offset;
this module says *what* it moved, by the rows' own steps, and finds the rows that can no longer be
read (a garbled line: a torn write, an editor, a full disk):
  describe(data)             "rows of steps 14..16 and 1 garbled line": the bytes about to be cut
  cut_by_step(path, done, s) when an unreadable line sits inside the kept part (its byte sizes no
                             longer mark the checkpoint's rows): keeps the readable rows of steps
                             < done, moves later rows to `.cut-<s>` and unreadable lines to
                             `.garbled-<s>`, and says which step each unreadable line most likely
                             held (the one its neighbours' steps leave out)
A step whose row is lost is not re-run (its update is already in the checkpoint being resumed,
and re-running it would apply it twice): it is reported on stdout and flagged in events.jsonl
(`metrics_row_lost`, value = the step).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench.core import atomic


def parse(line: bytes) -> dict | None:
    """A complete JSONL row, else None (torn, garbled, or not an object)."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def span(steps: list[int]) -> str:
    if not steps:
        return ""
    if steps == list(range(steps[0], steps[-1] + 1)) and len(steps) > 2:
        return f"steps {steps[0]}..{steps[-1]}"
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(map(str, steps))


def describe(data: bytes) -> str:
    """What a block of JSONL bytes holds, named by the rows' own `step` values."""
    lines = [l for l in data.splitlines(keepends=True) if l.strip()]
    rows = [parse(l) for l in lines]
    steps = [r["step"] for r in rows if r is not None and isinstance(r.get("step"), int)]
    other = sum(1 for r in rows if r is not None and not isinstance(r.get("step"), int))
    bad = sum(1 for r in rows if r is None)
    parts = [f"rows of {span(steps)}"] if steps else []
    parts += [f"{other} row{'s' * (other != 1)} without a step"] if other else []
    parts += [f"{bad} unreadable line{'s' * (bad != 1)}"] if bad else []
    return " and ".join(parts) or "no rows"


def garbled_before(path: Path, offset: int) -> bool:
    """An unreadable line starts before byte `offset` of `path` (the kept part is damaged: its
    recorded byte sizes no longer mark the checkpoint's rows)."""
    if not Path(path).is_file():
        return False
    at = 0
    for line in Path(path).read_bytes().splitlines(keepends=True):
        if at >= offset:
            return False
        if line.strip() and parse(line) is None:
            return True
        at += len(line)
    return False


def cut_by_step(path: Path, done: int, stamp: str) -> tuple[list[int | None], list[int]]:
    """metrics.jsonl cut back by its rows' steps instead of bytes: readable rows of steps < `done`
    (those the checkpoint covers) stay, in order; later rows go to `<name>.cut-<stamp>`, unreadable
    lines to `<name>.garbled-<stamp>`. Returns (the step each unreadable line most likely held,
    None where its neighbours cannot tell; the steps of the rows cut)."""
    path = Path(path)
    lines = [l if l.endswith(b"\n") else l + b"\n" for l in path.read_bytes().splitlines(keepends=True) if l.strip()]
    rows = [parse(l) for l in lines]
    steps = [r.get("step") if r is not None else None for r in rows]
    guesses = []
    for i, r in enumerate(rows):
        if r is None:
            before = next((s for s in reversed(steps[:i]) if isinstance(s, int)), -1)
            after = next((s for s in steps[i + 1:] if isinstance(s, int)), None)
            guesses.append(before + 1 if after is None or after == before + 2 else None)
    late = [i for i, s in enumerate(steps) if isinstance(s, int) and s >= done]
    for suffix, idx in (("garbled", [i for i, r in enumerate(rows) if r is None]), ("cut", late)):
        if idx:
            with open(path.with_name(f"{path.name}.{suffix}-{stamp}"), "ab") as out:
                out.write(b"".join(lines[i] for i in idx))
                out.flush()
                os.fsync(out.fileno())
    atomic.write_bytes(path, b"".join(l for l, r, s in zip(lines, rows, steps) if r is not None and not
                                      (isinstance(s, int) and s >= done)))
    return guesses, [steps[i] for i in late]


def with_row(path: Path, size: int, step: int) -> int:
    """`size`, extended by the next line of `path` when that is the complete metrics row of `step`
    (the row end_step writes after the step's checkpoint)."""
    try:
        with open(path, "rb") as f:
            f.seek(size)
            line = f.readline()
    except OSError:
        return size
    row = parse(line)
    return size + len(line) if row is not None and row.get("step") == step else size


def _line_at(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.readline()
    except OSError:
        return b""


def resume_cut(run_dir: Path, state: dict, stamp: str) -> tuple[list[str], list[int]]:
    """Cut the run's JSONL files back to the checkpoint `state` (rundir.cut_back), then drop the
    unreadable lines left in metrics.jsonl. Returns (one stdout line per thing done, the steps that
    now have no metrics row). A checkpoint from before sizes were recorded cannot say where to
    cut: its files are only cleaned of unreadable lines."""
    from bench.run import rundir

    run_dir, notes, lost = Path(run_dir), [], []
    metrics = run_dir / "metrics.jsonl"
    sizes = dict(state.get("jsonl_sizes") or {})
    if garbled_before(metrics, sizes.get("metrics.jsonl", metrics.stat().st_size if metrics.is_file() else 0)):
        guesses, cut = cut_by_step(metrics, int(state["step"]), stamp)
        for step in guesses:
            where = f"step {step}'s row" if step is not None else "a row whose step cannot be told"
            fate = " (that step runs again)" if step is not None and step >= state["step"] else \
                " (not re-run: its update is in the checkpoint; flagged in events.jsonl)"
            notes.append(f"resume: metrics.jsonl held an unreadable line ({where}); moved to "
                         f"metrics.jsonl.garbled-{stamp}{fate}")
            if step is None or step < state["step"]:
                lost.append(-1 if step is None else step)
        if cut:
            notes.append(f"resume: moved the metrics rows of {span(cut)} (written after the checkpoint) to "
                         f"metrics.jsonl.cut-{stamp}")
        sizes["metrics.jsonl"] = metrics.stat().st_size  # already cut: the byte cut leaves it alone
    if "jsonl_sizes" in state:
        pending = state.get("row_pending")
        if pending is not None and "metrics.jsonl" in sizes and metrics.is_file() \
                and sizes["metrics.jsonl"] != metrics.stat().st_size:
            kept = with_row(metrics, sizes["metrics.jsonl"], pending)
            line = _line_at(metrics, sizes["metrics.jsonl"])
            if kept == sizes["metrics.jsonl"] and line.strip() and parse(line) is None:
                lost.append(pending)  # the row written right after the checkpoint is unreadable
                notes.append(f"resume: the metrics row of step {pending} (written after its checkpoint) is "
                             f"unreadable; moved aside with the cut, step {pending} has no metrics row "
                             f"(not re-run: its update is in the checkpoint; flagged in events.jsonl)")
            sizes["metrics.jsonl"] = kept
        tails = {}
        for name in rundir.JSONL:
            f = run_dir / name
            if f.is_file() and f.stat().st_size > sizes.get(name, 0):
                with open(f, "rb") as fh:
                    fh.seek(sizes.get(name, 0))
                    tails[name] = describe(fh.read())
        for name, n in rundir.cut_back(run_dir, sizes, stamp).items():
            notes.append(f"resume: moved {n} bytes of {name} ({tails[name]}, written after the checkpoint) "
                         f"to {name}.cut-{stamp}")
    return notes, lost
