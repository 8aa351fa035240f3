"""Phase split of the CURRENT GRPO recipe, measured before the loop is wired to bench.timing.

    python scripts/phase_split_probe.py --steps 8 -- trainer_precision=bf16 generator_precision=fp8_blockwise

A stopgap for issue 18's benchmark table: it wraps the recipe's own functions with timer phases
from outside (no recipe file changes) and prints the mean split over the timed steps. Delete it
once recipes/grpo.py calls PhaseTimer itself; the wrapped boundaries are approximations of the
wired ones:
  refit            Generator.refit
  rollout_prefill  the generator model's forwards over more than one position (the KV-cache prefill)
  rollout_decode   the rest of Generator.generate: one-token forwards, sampling, bookkeeping
  score            the rest of recipes.grpo.rollout_shard: task sampling, rewards, the trainer's
                   no-grad log-prob recompute, advantages, entropy (data_wait is folded in here)
  update           the trainer's forward with grad, Trainer.backward, Trainer.step
  eval             recipes.grpo.evaluate and save_samples
  checkpoint       Session.save;  monitor: Session.log_metrics
  other            mismatch metrics, IS weights, policy loss, loop bookkeeping
The step boundary is the call of rollout_step (the first thing a step does); the last step ends
when train() returns. The initial eval (before step 0) is outside every step.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

import recipes.grpo as grpo  # noqa: E402
from bench import distributed  # noqa: E402
from bench.generation import Generator  # noqa: E402
from bench.session import Session  # noqa: E402
from bench.timing import PHASES, PhaseTimer, TimingConfig, phase  # noqa: E402
from bench.training import Trainer  # noqa: E402


def in_phase(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        with phase(name):
            return fn(*a, **k)
    return wrapper


def instrument(timer: PhaseTimer, rows: list[dict]) -> None:
    step_fn = grpo.rollout_step

    def rollout_step(s, g, step, *a, **k):
        if timer._t0 is not None:
            rows.append(timer.end_step())
        timer.begin_step(step)
        return step_fn(s, g, step, *a, **k)

    def generate(self, *a, **k):
        fwd = self.model.forward
        self.model.forward = lambda x, *fa, **fk: (in_phase("rollout_prefill", fwd) if x.shape[1] > 1 else fwd)(
            x, *fa, **fk)
        try:
            with phase("rollout_decode"):
                return gen(self, *a, **k)
        finally:
            del self.model.forward  # back to the class's forward

    gen = Generator.generate
    Generator.generate = generate
    Generator.refit = in_phase("refit", Generator.refit)
    grpo.rollout_step = rollout_step
    grpo.rollout_shard = in_phase("score", grpo.rollout_shard)
    grpo.evaluate = in_phase("eval", grpo.evaluate)
    grpo.save_samples = in_phase("eval", grpo.save_samples)
    Trainer.backward = in_phase("update", Trainer.backward)
    Trainer.step = in_phase("update", Trainer.step)
    Session.save = in_phase("checkpoint", Session.save)
    Session.log_metrics = in_phase("monitor", Session.log_metrics)
    wrap = distributed.wrap
    distributed.wrap = lambda *a, **k: in_phase("update", wrap(*a, **k))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=1, help="leading steps left out of the mean (warm-up)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import compose_cfg

    cfg = compose_cfg("grpo", ["logger=disabled", "threads=1", f"steps={a.steps}", f"eval_every={a.steps}",
                               f"checkpoint_every={a.steps}", "eval_problems=50", *a.overrides])
    cfg.run_dir = str(Path("runs/probe") / f"{cfg.run_name}_{time.strftime('%Y%m%d_%H%M%S')}")
    OmegaConf.resolve(cfg)
    timer, rows = PhaseTimer(TimingConfig(sync_interval=0), "cpu"), []
    instrument(timer, rows)
    grpo.train(Session(cfg, "grpo"))
    if timer._t0 is not None:
        rows.append(timer.end_step())
    last, rows = rows[-1], rows[a.skip:-1]  # the last step also evaluates and checkpoints
    step = statistics.mean(sum(r[f"time/{p}_s"] for p in PHASES) for r in rows)
    print(f"{cfg.run_name}: {len(rows)} steps, mean step {step * 1e3:.1f} ms")
    for p in PHASES:
        s = statistics.mean(r[f"time/{p}_s"] for r in rows)
        print(f"  {p:>16} {s * 1e3:9.1f} ms  {s / step:6.1%}")
    print(f"  last step: eval {last['time/eval_s'] * 1e3:.1f} ms, checkpoint {last['time/checkpoint_s'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
