"""One run dir, one writer: an advisory lock on `<run_dir>/.lock`.

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on a file that names its holder ("pid host"). flock
belongs to the open file description, so the kernel drops it when the holder exits, however it
exits (SIGKILL, OOM, a node reboot): a held flock always means a live writer, and a second
writer is refused with one line naming it. The holder's name stays in the file until a clean
release empties it, so a new writer that gets the lock and still finds a name there knows the
previous one died without finishing: it takes the lock over and the session records a
`lock_takeover` event naming the dead pid.

Limits: flock is advisory (it stops fp8bench, not `rm`), and on NFS it is only as good as the
server's lock manager; Lustre/GPFS support it when mounted with flock.
Re-entrant per process: an in-process test that runs twice on one dir reuses its own lock.
"""
from __future__ import annotations

import atexit
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BadInput

LOCK_NAME = ".lock"


@dataclass
class Held:
    fd: int
    stale: str | None  # "pid host" of a writer that died holding the dir, when this took it over


_HELD: dict[Path, Held] = {}


def _me() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def acquire(run_dir: Path) -> Held:
    """Lock `run_dir` for this process or raise BadInput naming the live holder."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return _HELD[key]
    try:
        fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BadInput(f"run_dir={run_dir} cannot hold a lock file ({e.strerror}); "
                       f"valid: a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        pid, host = (holder + ["?", "?"])[:2]
        raise BadInput(f"run_dir={run_dir} is in use by pid {pid} on host {host} (lock {key / LOCK_NAME}); "
                       f"valid: wait for that run to end, or choose another run_dir") from None
    previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
    os.ftruncate(fd, 0)
    os.pwrite(fd, _me().encode(), 0)
    os.fsync(fd)
    _HELD[key] = held = Held(fd, previous or None)
    return held


def live_holder(run_dir: Path) -> str | None:
    """"pid host" of another live process holding `run_dir`'s lock, else None. A probe: takes
    and drops the flock on its own descriptor, so it never keeps the lock (validation uses it to
    name the running writer before anything else is said about the dir)."""
    key = Path(run_dir).resolve()
    if key in _HELD or not (key / LOCK_NAME).is_file():
        return None
    try:
        fd = os.open(key / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 256, 0).decode(errors="replace").strip() or "? ?"
    finally:
        os.close(fd)


def held(run_dir: Path) -> Held | None:
    return _HELD.get(Path(run_dir).resolve())


def release(run_dir: Path) -> None:
    """Empty the holder's name (a clean end) and drop the lock."""
    h = _HELD.pop(Path(run_dir).resolve(), None)
    if h is None:
        return
    os.ftruncate(h.fd, 0)
    os.fsync(h.fd)
    fcntl.flock(h.fd, fcntl.LOCK_UN)
    os.close(h.fd)


@atexit.register
def _release_all() -> None:
    """A process that exits normally (including exit 2 on bad input after the dir was locked) is
    not a crash: leave no name behind that would read as a dead writer."""
    for path in list(_HELD):
        release(path)
