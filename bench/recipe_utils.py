"""Helpers the recipe entry points share: CLI override checks and the start-up precision print."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_choices(group: str) -> list[str]:
    """The choices of a config group: its conf/<group>/*.yaml files by name."""
    from bench.config.overrides import group_choices as choices

    return choices(group)


def check_overrides(recipe: str, argv: list[str] | None = None) -> None:
    """Before Hydra composes anything: unknown group choices, key typos and values of the wrong
    type get one `fp8bench: error:` line naming the nearest valid key or the valid choices, and
    exit 2 (Hydra's own errors are multi-line, exit 1). The checks: bench/config/overrides.py."""
    from bench.config import check_overrides as check
    from bench.errors import BadInput

    try:
        check(recipe, sys.argv[1:] if argv is None else argv)
    except BadInput as e:
        print(f"fp8bench: error: {e}", file=sys.stderr)
        sys.exit(2)


def print_precision_state(plans: dict, model: torch.nn.Module, device: torch.device) -> None:
    """What runs in which dtype, through which engine, on which device: printed at start-up."""
    table = Table(title=f"precision state on {device}", show_lines=False)
    for col in ("side", "recipe", "engine", "FP8 Linears", "high-precision Linears", "compute dtype"):
        table.add_column(col)
    from bench.precision.mixed import compute_dtype

    for side, plan in plans.items():
        r = plan.recipe
        fp8 = f"{len(plan.fp8_modules)} ({r.scaling}: {r.fwd_format}/{r.grad_format})" if r else "0"
        hp = ", ".join(plan.high_precision_modules) if r else "all"
        table.add_row(side, plan.name, plan.engine, fp8, hp, str(compute_dtype(plan.name)).replace("torch.", ""))
    n = sum(p.numel() for p in model.parameters())
    Console(width=160).print(table)
    print(f"master weights and optimizer state: fp32 ({n / 1e6:.2f}M parameters); logits and "
          f"log-softmax: fp32; norms and RoPE: fp32", flush=True)
