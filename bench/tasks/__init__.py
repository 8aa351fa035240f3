"""Task registry: name -> Task class. Add a task by writing a Task subclass and listing it here."""
from __future__ import annotations

from bench.tasks.arithmetic import Addition, Reversal
from bench.tasks.base import Problem, Task
from bench.tasks.textfile import TextFile

TASKS: dict[str, type[Task]] = {"addition": Addition, "reversal": Reversal, "textfile": TextFile}


def build_task(cfg) -> Task:
    """cfg: a mapping with `name` and the task's own knobs."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](**cfg)


__all__ = ["TASKS", "Task", "Problem", "build_task"]
