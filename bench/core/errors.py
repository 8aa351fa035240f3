"""User mistakes are not crashes: one clear line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import functools
import sys


class BadInput(Exception):
    """Bad input from the user (config value, path, file). The message names the bad value and
    the valid choices."""


def exit_on_bad_input(fn):
    """Decorator: BadInput -> `fp8bench: error: <msg>` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInput as e:
            print(f"fp8bench: error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
