"""Monitor overhead, side by side: the same training steps with `monitor=off` (interval 0) and
`monitor=default` (interval 25), in one process, alternating rows round by round.

    python -m bench.numerics.overhead --recipe fp8_delayed --rounds 5 --steps 25 --threads 1

Both rows pay the per-cast clamp counts and the per-step read of them (they are what turns a
saturating cast into an overflow event on the step it happens, monitor on or off); the default
row adds the full statistics on one step in 25. Each row's number is the MEAN step time (the
monitor's cost lands on 1 step in 25, which a median hides), and each row's result is the MIN
over rounds: on a shared machine other processes only ever add time, so the least-disturbed
round is the best estimate of the row's own cost. overhead = default / off − 1.
Steps are bench.perf.train_row's (the recipes' plan -> apply -> Trainer path).
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.model import ModelConfig

TINY = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=64)


def monitor_overhead(recipe: str = "fp8_delayed", engine: str = "reference", rounds: int = 5, steps: int = 25,
                     warmup: int = 3, batch: int = 8, interval: int = 25, cfg: ModelConfig = TINY) -> dict:
    """{'off_s', 'default_s', 'overhead', 'rounds'}: min over rounds of the mean step time."""
    from bench.perf import train_row  # the shared timing loop

    a = argparse.Namespace(warmup=warmup, steps=steps, batch=batch, seq_len=cfg.max_seq_len)
    runs: dict[str, list[float]] = {"off": [], "default": []}
    for _ in range(rounds):
        for label, iv in (("off", 0), ("default", interval)):
            runs[label].append(train_row(a, cfg, torch.device("cpu"), recipe, engine, False, iv)["step_s_mean"])
    off, on = min(runs["off"]), min(runs["default"])
    return {"recipe": recipe, "engine": engine, "interval": interval, "off_s": off, "default_s": on,
            "overhead": on / off - 1, "rounds": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="fp8_delayed")
    ap.add_argument("--engine", default="reference")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = monitor_overhead(a.recipe, a.engine, a.rounds, a.steps)
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
