"""What the loop's phase timing costs: the same GRPO run with the timer on and off, side by side.

    python scripts/timing_overhead.py --steps 8 --repeats 2 trainer_precision=bf16 generator_precision=bf16

"Off" replaces the session's PhaseTimer by one that only reads the clock at the step's two ends
(the step time must still be measured to compare): no phase bookkeeping, module-level `phase()`
a no-op, DDP's comm hook on its async path. Runs alternate on/off (and who goes first) so machine drift hits both.
Prints, per setting, the mean step time over steps 1..N-2 of each run (step 0 warms up, the last
step evaluates and checkpoints), the median over steps of the paired ratio (same seed, same step:
the same work, timer on vs off), and the number of phase blocks a step opens (timer on), which
times the micro-benchmark's per-block cost (`python -m bench.timing`) is the timer's own cost.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

import bench.run.session  # noqa: E402
from bench.perf.timing import PhaseTimer  # noqa: E402


class NullTimer(PhaseTimer):
    """The step's wall time and nothing else."""
    def phase(self, name):
        return contextlib.nullcontext()

    def begin_step(self, step):
        self._t0 = time.perf_counter_ns()

    def end_step(self, tokens=None):
        self.step_s, self._t0 = (time.perf_counter_ns() - self._t0) / 1e9, None
        self.steps += 1
        return {}


class CountingTimer(PhaseTimer):
    """The real timer, counting the phase blocks opened (nested and module-level included)."""
    entries = 0

    def _enter(self, name):
        CountingTimer.entries += 1
        super()._enter(name)


def run(overrides: list[str], timer_cls, run_dir: Path) -> list[float]:
    import recipes.grpo as grpo

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="grpo", overrides=["logger=disabled", "threads=1", f"run_dir={run_dir}", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.resolve(cfg)
    bench.run.session.PhaseTimer = timer_cls
    times = []
    log = bench.run.session.Session.log_step

    def log_step(self, step, metrics, *a, **k):
        log(self, step, metrics, *a, **k)
        times.append(self.timer.step_s)

    bench.run.session.Session.log_step = log_step
    try:
        assert grpo.train(bench.run.session.Session(cfg, "grpo")) == 0
    finally:
        bench.run.session.Session.log_step = log
        bench.run.session.PhaseTimer = PhaseTimer
    return times[1:-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args, overrides = ap.parse_known_args()
    overrides = [f"steps={args.steps}", *overrides]
    steps = {"on": [], "off": []}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            order = (("on", CountingTimer), ("off", NullTimer))
            got = {}
            for name, cls in (order if i % 2 == 0 else order[::-1]):  # alternate who goes first
                CountingTimer.entries = 0
                got[name] = run(overrides, cls, Path(tmp) / f"{name}{i}")
                steps[name] += got[name]
                extra = f", {CountingTimer.entries / args.steps:.1f} phase blocks/step" if name == "on" else ""
                print(f"timer {name:>3} run {i}: mean step {1e3 * statistics.fmean(got[name]):.1f} ms{extra}", flush=True)
            # Same seed, same step: the same rollout and update, so step k on vs step k off is a pair.
            ratios += [a / b for a, b in zip(got["on"], got["off"])]
    on, off = statistics.fmean(steps["on"]), statistics.fmean(steps["off"])
    print(f"timer on {1e3 * on:.1f} ms, off {1e3 * off:.1f} ms per step (means: {100 * (on / off - 1):+.2f}%); "
          f"median of {len(ratios)} paired step ratios on/off: {100 * (statistics.median(ratios) - 1):+.2f}%")


if __name__ == "__main__":
    main()
