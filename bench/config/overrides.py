"""CLI overrides, checked before Hydra composes anything: one line instead of Hydra's six.

Hydra reports an unknown group choice, a key typo or a value of the wrong type as a multi-line
error with exit 1. Here each override is checked against the composed defaults of the same
recipe and groups (so against the schemas of bench/config/schema.py): a group choice must be one
of the group's files, a key must exist (else the nearest valid key, by difflib, and the keys at
that level), and a value must convert to the key's type. Sweeps (`-m seed=0,1,2`) check every
listed value. Anything else Hydra would refuse is caught by composing the full override list once.
"""
from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf

from bench.core.errors import BadInput

CONF = Path(__file__).resolve().parents[2] / "conf"
TYPE_HINTS = {int: "an integer", float: "a number", bool: "true, false", str: "a string"}


def group_choices(group: str) -> list[str]:
    """The files of a config group (conf/<group>/*.yaml) by name."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def is_group(key: str) -> bool:
    return "." not in key and "@" not in key and (CONF / key).is_dir()


def parse(argv: list[str]):
    """Hydra's own parser over the `key=value` arguments (not the flags): every one through the
    grammar, then the `hydra...` ones left to Hydra to check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if "=" in a and not a.startswith("-")]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides=args)
    except Exception as e:  # hydra.* keys too: hydra.sweep.dir=runs/démo fails the same way
        raise BadInput(malformed(parser, args, e)) from None
    return [ov for ov, a in zip(parsed, args) if not a.startswith("hydra")]


def malformed(parser, args: list[str], err: Exception) -> str:
    """The line for an override Hydra's grammar refuses. Its unquoted values admit ASCII letters,
    digits and a few symbols only, so a path such as runs/démo fails in the lexer with a message
    that names no fix; a quoted value takes any character. Where quoting the bad override's value
    makes it parse, the line gives the quoted form to type (shell quotes around Hydra's)."""
    import shlex

    for a in args:
        try:
            parser.parse_overrides(overrides=[a])
            continue
        except Exception:
            pass
        key, _, value = a.partition("=")
        quoted = f"{key}={quote(value)}"
        try:
            parser.parse_overrides(overrides=[quoted])
        except Exception:
            break
        odd = next((c for c in value if ord(c) > 127), None)
        why = f"{odd!r} is not ASCII" if odd else "a character Hydra reserves"
        return (f"malformed override {a} ({why}: Hydra takes only ASCII letters, digits and a few symbols in an "
                f"unquoted value); valid: the value in quotes, {shlex.quote(quoted)}")
    return f"malformed override ({str(err).splitlines()[0]}); valid: key=value, group=choice"


def quote(value: str) -> str:
    """A value in Hydra's quotes; each element of a sweep (a,b) on its own, so it stays a sweep."""
    return ",".join(f"'{v}'" if '"' in v else f'"{v}"' for v in value.split(","))


def values(ov) -> list:
    """The element(s) an override sets: one, or each of a sweep's (choice, range, and a glob over a
    group's files); [] for an interval sweep (a continuum: left to the sweeper)."""
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    if not ov.is_sweep_override():
        return [ov.value()]
    v = ov.value()
    if isinstance(v, ChoiceSweep):
        return list(v.list)
    if isinstance(v, RangeSweep):
        return list(range(int(v.start), int(v.stop), int(v.step))) if float(v.start).is_integer() else []
    if isinstance(v, Glob) and is_group(ov.key_or_group):
        return v.filter(group_choices(ov.key_or_group))
    return []


def compose(recipe: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import bench.config.schema  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=recipe, overrides=overrides)


def load_choice(group: str, choice: str, recipe: str = "pretrain"):
    """One group option composed with its schema (every key, typed, defaults filled), as the
    recipes see it: for tools that build a piece without a recipe (bench/benchmarks/throughput.py). Reading the
    YAML file alone misses the schema's defaults (and holds Hydra's `defaults` list)."""
    return compose(recipe, [f"{group}={choice}"])[group]


def as_arg(ov, value) -> str:
    """The override as text again (its key element keeps any +, ++ or ~), a sweep at one value."""
    return f"{ov.get_key_element()}={ov.get_value_element_as_str() if value is None else value}"


def fmt(v) -> str:
    """A parsed override element back as override text."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def check(recipe: str, argv: list[str]) -> None:
    """Raise BadInput (one line) for the first bad override in argv."""
    check_flag_position(recipe, argv)
    ovs = parse(argv)
    first = []  # the overrides with each sweep at its first value: what the base config is composed with
    for ov in ovs:
        vals = values(ov)
        if is_group(ov.key_or_group) and ov.type.name == "CHANGE":
            valid = group_choices(ov.key_or_group)
            for v in vals:
                if v not in valid:
                    raise BadInput(f"unknown {ov.key_or_group}={v!r}; valid: {', '.join(valid)}")
        if ov.is_sweep_override() and not vals:
            continue  # an interval sweep: composed at its default
        first.append(as_arg(ov, fmt(vals[0]) if ov.is_sweep_override() else None))
    # The base holds the group choices (+ or not) and deletions, not a `+key=value` of a plain key:
    # that key is checked against the schemas below like any other (a key no schema declares is
    # read by nothing, so `+is_correction.cpa=3` is a typo, not an extension).
    groups = [a for a in first if is_group(a.lstrip("+~").split("=", 1)[0]) or a.startswith("~")]
    base = try_compose(recipe, groups)
    keyed = [ov for ov in ovs if ov.type.name in ("CHANGE", "ADD", "FORCE_ADD") and not is_group(ov.key_or_group)]
    for ov in keyed:
        check_key(base, ov.key_or_group)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not multirun:
        check_sweep_without_m(recipe, ovs, base)
    for ov in keyed:
        if ov.type.name == "CHANGE":
            for v in values(ov):
                check_value(base, ov.key_or_group, v)
    try_compose(recipe, first)
    if multirun:
        check_run_dir_under_sweep(ovs)
        validate_sweep(recipe, ovs)


def check_run_dir_under_sweep(ovs) -> None:
    """Under -m every job writes to its own subdir of hydra.sweep.dir (session.multirun_dir), so a
    run_dir override would be dropped without a word; the sweep's dir is the key that places it."""
    ov = next((ov for ov in ovs if ov.key_or_group == "run_dir" and ov.type.name == "CHANGE"), None)
    if ov is not None:
        value = ov.input_line.split("=", 1)[1]
        raise BadInput(f"{ov.input_line} has no effect under -m: each job writes to <hydra.sweep.dir>/<job>; "
                       f"valid: hydra.sweep.dir={value}")


def check_flag_position(recipe: str, argv: list[str]) -> None:
    """Hydra's argument parser reads the overrides as one run of words: overrides on both sides of
    -m end in its usage screen."""
    flags = [i for i, a in enumerate(argv) if a in ("-m", "--multirun")]
    words = [i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")]
    if flags and words and words[0] < flags[0] < words[-1]:
        f = flags[0]
        rest = " ".join(a for a in argv if a not in ("-m", "--multirun"))
        raise BadInput(f"{argv[f]} sits between overrides ({argv[f - 1]} {argv[f]} {argv[f + 1]}); Hydra reads "
                       f"its flags before or after the overrides, not among them; valid: "
                       f"python -m recipes.{recipe} {argv[f]} {rest}")


def check_sweep_without_m(recipe: str, ovs, base) -> None:
    """A sweep (a,b) without -m is Hydra's multi-line "Ambiguous value" error (exit 1). For a list
    key (monitor.shadow=mxfp8,fp8_rowwise) the list was meant, for any other key the sweep."""
    sweep = next((ov for ov in ovs if ov.is_sweep_override()), None)
    if sweep is None:
        return
    key, value = sweep.key_or_group, sweep.input_line.split("=", 1)[1]
    if not is_group(key) and type_hint(base, key).startswith("a list"):
        raise BadInput(f"{sweep.input_line} is a sweep, not a list; valid: {key}=[{value}]")
    raise BadInput(f"{sweep.input_line} is a sweep (one job per value) but -m is not given; valid: add -m "
                   f"(python -m recipes.{recipe} -m {sweep.input_line} ...) or give one value")


def validate_sweep(recipe: str, ovs, limit: int = 256) -> None:
    """Under -m, run the validation pass on every job's config before Hydra launches any: a value
    bad for one cell (say model.d_ff=400 with mxfp8 in a precision sweep) must not surface after
    the cells before it have trained. Run-dir checks are left to each job (its dir is Hydra's)."""
    import itertools

    choices = [[as_arg(ov, fmt(v)) for v in values(ov)] if ov.is_sweep_override() else [as_arg(ov, None)]
               for ov in ovs]
    swept = [ov.is_sweep_override() for ov, c in zip(ovs, choices) if c]
    choices = [c for c in choices if c]
    total = math.prod(len(c) for c in choices)
    jobs = list(itertools.islice(itertools.product(*choices), limit))
    for n, job in enumerate(jobs):
        if (err := job_error(recipe, job)) is None:
            continue
        if n == 0 and len(jobs) > 1 and job_error(recipe, jobs[-1]) == err:
            raise BadInput(err)  # the first and last cells fail alike: a value every cell shares
        # Name the cell by its swept values and its number, as Hydra names the job's dir (<n>_...).
        cell = ",".join(a for a, s in zip(job, swept) if s)
        raise BadInput(f"sweep cell {cell} (job {n} of 0..{total - 1}): {err}")


def job_error(recipe: str, job) -> str | None:
    """The validation pass's BadInput line for one sweep job's overrides, or None."""
    from bench.config.validate import validate

    try:
        validate(try_compose(recipe, list(job)), recipe, dirs=False)
    except BadInput as e:
        return str(e)
    return None


def try_compose(recipe: str, overrides: list[str]):
    try:
        return compose(recipe, overrides)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        cause = e.__cause__
        if cause is not None and str(cause).strip():
            msg += f" ({str(cause).strip().splitlines()[0]})"
        raise BadInput(f"{msg}; valid: see `python -m recipes.{recipe} --cfg job`") from None


def check_key(cfg, key: str) -> None:
    """The key exists; else one line naming the nearest valid key and the keys at that level."""
    node, path = cfg, []
    for part in key.split("."):
        if isinstance(node, ListConfig):
            return  # list indices: the value check reports a bad one
        if not isinstance(node, DictConfig) or part not in node.keys():  # `in node` is False for ??? values
            keys = list(node.keys()) if isinstance(node, DictConfig) else []
            where = ".".join(path)
            near = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join([*path, near[0]])}? " if near else ""
            raise BadInput(f"unknown config key {key!r}; {hint}valid keys{' under ' + where if where else ''}: "
                           f"{', '.join(keys)}")
        node = node[part] if not OmegaConf.is_missing(node, part) else None
        path.append(part)


def check_value(cfg, key: str, value) -> None:
    """The value converts to the key's schema type (the merge Hydra would do, on a copy)."""
    trial = copy.deepcopy(cfg)
    try:
        OmegaConf.update(trial, key, value, merge=True)
    except Exception:
        raise BadInput(f"{key}={value!r} is not valid for this key; valid: {type_hint(cfg, key)}") from None


def type_hint(cfg, key: str) -> str:
    """What the schema accepts at `key`, in words ("an integer, or null")."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    try:
        meta = node._get_node(leaf)._metadata
    except Exception:
        return "a value of the key's type"
    if get_origin(meta.ref_type) in (list, tuple) or meta.ref_type in (list, tuple):
        return "a list, e.g. [a, b]" + (", or null" if meta.optional else "")
    types = [t for t in (get_args(meta.ref_type) or (meta.ref_type,)) if t is not type(None)]
    hint = " or ".join(TYPE_HINTS.get(t, getattr(t, "__name__", str(t))) for t in types)
    return hint + (", or null" if meta.optional else "")
