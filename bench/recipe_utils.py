"""Helpers the recipe entry points share: CLI override checks. The start-up precision print is
bench.precision.plan.print_precision_state (re-exported here for the entry points)."""
from __future__ import annotations

import sys
from pathlib import Path

from bench.precision.plan import print_precision_state  # noqa: F401  (moved; entry points import it here)

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def check_overrides(recipe: str, argv: list[str] | None = None) -> None:
    """Before Hydra composes anything: a `group=value` override naming a config that doesn't
    exist gets one clear line with the valid choices and exit 2 (Hydra's own error is a
    multi-line exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if "." in key or "@" in key or not (CONF / key).is_dir():
            continue
        if value.startswith(("choice(", "range(", "glob(", "interval(")):
            continue
        valid = group_choices(key)
        for v in value.split(","):
            if v not in valid:
                print(f"fp8bench: error: unknown {key}={v!r}; valid: {', '.join(valid)}", file=sys.stderr)
                sys.exit(2)
