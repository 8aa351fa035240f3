"""Helpers the recipe entry points share: CLI override checks and the start-up precision print."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

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
