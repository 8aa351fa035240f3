"""Task registry: name -> Task class. Add a task by writing a Task subclass and listing it here."""
from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf

from bench.tasks.arith import Arith
from bench.tasks.arithmetic import Addition, Reversal
from bench.tasks.base import Problem, Task
from bench.tasks.jsonl import Jsonl
from bench.tasks.longstr import LongStr
from bench.tasks.textfile import TextFile

TASKS: dict[str, type[Task]] = {"addition": Addition, "reversal": Reversal, "textfile": TextFile, "arith": Arith,
                               "longstr": LongStr, "jsonl": Jsonl}


def build_task(cfg, tokenizer=None) -> Task:
    """cfg: a mapping with `name` and any of the task's knobs; the others take the defaults of the
    task's Config dataclass. An unknown name or knob is a ValueError naming the valid choices.
    tokenizer: None (the character tokenizer) or a wrapped HF tokenizer (bench/tasks/hf_tokenizer.py)."""
    cfg = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)  # a ??? path stays "???"
    name = cfg.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    cls = TASKS[name]
    known = [f.name for f in fields(cls.Config) if f.name != "name"]
    for k in cfg:
        if k not in known:
            raise ValueError(f"unknown key task.{k} for task={name}; valid: {', '.join(known)}")
    defaults = {f.name: getattr(cls.Config(), f.name) for f in fields(cls.Config)}
    return cls(**{k: cfg.get(k, defaults[k]) for k in known}, tokenizer=tokenizer)


__all__ = ["TASKS", "Task", "Problem", "build_task"]
