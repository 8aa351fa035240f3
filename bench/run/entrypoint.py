"""Helpers the recipe entry points share: CLI override checks. The start-up precision print is
bench.precision.plan.print_precision_state (re-exported here for the entry points)."""
from __future__ import annotations

import sys

from bench.precision.plan import print_precision_state  # noqa: F401  (moved; entry points import it here)


def group_choices(group: str) -> list[str]:
    """The choices of a config group: its conf/<group>/*.yaml files by name."""
    from bench.config.overrides import group_choices as choices

    return choices(group)


def check_overrides(recipe: str, argv: list[str] | None = None) -> None:
    """Before Hydra composes anything: unknown group choices, key typos and values of the wrong
    type get one `fp8bench: error:` line naming the nearest valid key or the valid choices, and
    exit 2 (Hydra's own errors are multi-line, exit 1). The checks: bench/config/overrides.py."""
    from bench.config import check_overrides as check
    from bench.core.errors import BadInput

    try:
        check(recipe, sys.argv[1:] if argv is None else argv)
    except BadInput as e:
        print(f"fp8bench: error: {e}", file=sys.stderr)
        sys.exit(2)
