"""Monitor overhead, side by side: the same training steps with `monitor=off` (interval 0) and
`monitor=default` (interval 25), in one process, rows alternating round by round; plus an
`uncounted` row with the per-cast clamp counting switched off, to show what that costs.

    python -m bench.benchmarks.overhead --recipe fp8_delayed --rounds 5 --steps 25 --threads 1

Both off and default pay the per-cast clamp counts and their once-per-step read (what turns a
saturating cast into an overflow event on the step it happens, monitor on or off); default adds
the full statistics on one step in `interval`. The estimate is built to survive a shared,
contended machine, where other processes only ever add time:
  base      the 25th percentile of a row's unsampled step times, pooled over rounds
  excess    median over rounds of (sampled step − that round's unsampled median): the statistics
  monitor overhead = excess / interval / base(off): off and default run the same code on
            unsampled steps (hooks return at once), so the statistics on 1 step in `interval` are
            the whole difference; measuring it inside each default run cancels the drift between
            runs that a ratio of two rows' means (also reported) suffers from
  counting  = base(off) / base(uncounted) − 1
Steps are bench.benchmarks.throughput.train_row's (the recipes' plan -> apply -> Trainer path).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from bench.models.decoder import ModelConfig

TINY = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=64)


def _q25(v: list[float]) -> float:
    return statistics.quantiles(v, n=4)[0] if len(v) > 1 else v[0]


def monitor_overhead(recipe: str = "fp8_delayed", engine: str = "reference", rounds: int = 5, steps: int = 25,
                     warmup: int = 3, batch: int = 8, interval: int = 25, cfg: ModelConfig = TINY) -> dict:
    """Mean step time per row (module docstring) and the two overhead ratios."""
    from bench.benchmarks.throughput import train_row  # the shared timing loop

    qmod = sys.modules["bench.precision.formats.fp8"]
    real_can_clamp = qmod.can_clamp
    a = argparse.Namespace(warmup=warmup, steps=steps, batch=batch, seq_len=cfg.max_seq_len)
    rows = {"uncounted": 0, "off": 0, "default": interval}
    plain: dict[str, list[float]] = {k: [] for k in rows}
    excess: list[float] = []
    for i in range(rounds):
        order = list(rows.items())
        for label, iv in (order if i % 2 == 0 else order[::-1]):  # alternate: no row always runs first
            qmod.can_clamp = (lambda r: False) if label == "uncounted" else real_can_clamp
            try:
                t = train_row(a, cfg, torch.device("cpu"), recipe, engine, False, iv)["step_s"]
            finally:
                qmod.can_clamp = real_can_clamp
            sampled = [x for k, x in enumerate(t) if iv and k % iv == 0]
            rest = [x for k, x in enumerate(t) if not (iv and k % iv == 0)]
            plain[label] += rest
            if sampled:
                excess.append(statistics.median(sampled) - statistics.median(rest))
    base = {k: _q25(v) for k, v in plain.items()}
    ex = statistics.median(excess) if excess else 0.0
    mean = {"uncounted": base["uncounted"], "off": base["off"], "default": base["default"] + ex / interval}
    return {"recipe": recipe, "engine": engine, "interval": interval, "steps": steps, "rounds": rounds,
            "mean_step_s": mean, "sampled_step_excess_s": ex,
            "monitor_overhead": ex / interval / base["off"], "ratio_of_row_means": mean["default"] / mean["off"] - 1,
            "clamp_counting_overhead": base["off"] / base["uncounted"] - 1}


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
