"""Each precision recipe's pretrain step vs bf16, and the numerics-monitor overhead, on this
machine: kept as a short name for the CPU form of the one benchmark, `python -m bench.benchmarks.throughput`.

    .venv/bin/python scripts/bench_precision.py [--steps 30] [--warmup 5] [--json OUT] [--recipes ...]
is
    .venv/bin/python -m bench.benchmarks.throughput --model tiny --batch 32 --monitor-interval 25 --decode-recipes \
        [--steps 30] [--warmup 5] [--json OUT] [--recipes ...]

(tiny model, the pretrain recipe's batch, the monitor's default interval, no decode rows; any
bench.benchmarks.throughput flag given here wins). One ratio convention everywhere (bench/benchmarks/throughput.py's docstring):
"x of bf16 throughput" = bf16 step time / row step time = row tokens/s / bf16 tokens/s, so
> 1 is faster than bf16; the monitor overhead is on / off mean step time − 1, in percent.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmarks.throughput import main  # noqa: E402

DEFAULTS = ["--model", "tiny", "--batch", "32", "--monitor-interval", "25", "--decode-recipes"]

if __name__ == "__main__":
    sys.exit(main(DEFAULTS + sys.argv[1:]))
