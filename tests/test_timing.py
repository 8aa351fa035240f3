"""Phase timer: exclusive phase times, `other` as the remainder, sampled device syncs, collectives.

Expected values are computed here from the intervals a fake integer clock produces, by the
definition (a phase's time = its interval minus the intervals of the phases directly inside it;
other = step interval minus the outermost phase intervals), not by the code under test.
"""
from __future__ import annotations

import json
import random
import time
import types

import pytest
import torch

from bench.core.errors import BadInput
from bench.perf.timing import (MEASURED, PHASES, PhaseTimer, TimingConfig, device_sync, overhead_ns, phase,
                          timed_collectives)


class FakeClock:
    def __init__(self):
        self.now = 1_000_000_007  # an arbitrary origin: only differences may matter

    def __call__(self) -> int:
        return self.now

    def tick(self, ns: int) -> None:
        self.now += ns


def make(interval=0, sync=None, clock=None, energy=None):
    return PhaseTimer(TimingConfig(sync_interval=interval), "cpu", sync=sync, clock=clock or FakeClock(),
                      energy=energy)


def test_nested_phase_is_subtracted_from_its_parent_and_other_is_the_remainder():
    c = FakeClock()
    t = make(clock=c)
    t.begin_step(0)
    c.tick(3)                        # other
    with t.phase("update"):
        c.tick(10)                   # update
        with t.phase("comm"):
            c.tick(7)                # comm
        c.tick(20)                   # update
    c.tick(5)                        # other
    with t.phase("eval"):
        c.tick(11)
    m = t.end_step()
    assert m["time/update_s"] == 30e-9 and m["time/comm_s"] == 7e-9 and m["time/eval_s"] == 11e-9
    assert m["time/other_s"] == 8e-9
    assert t.step_s == 56e-9
    assert m["time/update_frac"] == 30 / 56 and m["time/other_frac"] == 8 / 56
    assert all(m[f"time/{p}_s"] == 0.0 for p in ("refit", "rollout_prefill", "rollout_decode", "score",
                                                 "checkpoint", "monitor", "data_wait"))


def run_program(t: PhaseTimer, c: FakeClock, rng: random.Random, depth: int) -> tuple[int, int, dict]:
    """Random nested phases, gaps between them included. Returns (this level's elapsed ns, the
    summed intervals of the phases opened at this level, exclusive ns per phase by definition)."""
    excl = dict.fromkeys(MEASURED, 0)
    total = phases_total = 0
    for _ in range(rng.randint(0, 3)):
        gap = rng.randint(0, 50)
        c.tick(gap)
        name = rng.choice(MEASURED)
        start = c.now
        with t.phase(name):
            c.tick(rng.randint(0, 100))
            _, children, inner = run_program(t, c, rng, depth + 1) if depth < 3 else (0, 0, {})
            c.tick(rng.randint(0, 100))
        interval = c.now - start
        excl[name] += interval - children  # the definition: minus the phases directly inside
        for k, v in inner.items():
            excl[k] += v
        total += gap + interval
        phases_total += interval
    return total, phases_total, excl


@pytest.mark.parametrize("seed", range(20))
def test_random_nesting_matches_the_definition_and_other_is_never_negative(seed):
    rng, c = random.Random(seed), FakeClock()
    t = make(clock=c)
    t.begin_step(seed)
    t0 = c.now
    _, outermost, excl = run_program(t, c, rng, 0)
    c.tick(rng.randint(0, 50))
    wall = c.now - t0
    m = t.end_step()
    for p in MEASURED:
        assert m[f"time/{p}_s"] == excl[p] / 1e9
    assert m["time/other_s"] == (wall - outermost) / 1e9 >= 0
    assert sum(m[f"time/{p}_frac"] for p in PHASES) == pytest.approx(1.0, abs=1e-12)


def test_same_phase_nested_in_itself_is_counted_once():
    c = FakeClock()
    t = make(clock=c)
    t.begin_step(0)
    with t.phase("update"):
        c.tick(4)
        with t.phase("update"):
            c.tick(6)
    m = t.end_step()
    assert m["time/update_s"] == 10e-9 and m["time/other_s"] == 0.0


def test_empty_step_is_all_other():
    c = FakeClock()
    t = make(clock=c)
    t.begin_step(0)
    m = t.end_step()
    assert m["time/other_frac"] == 1.0 and sum(m[f"time/{p}_frac"] for p in PHASES) == 1.0


def test_sync_only_on_sampled_steps_and_before_each_boundary_reading():
    c, calls = FakeClock(), []

    def sync():  # a device wait: the clock moves while the host blocks
        calls.append(c.now)
        c.tick(5)

    t = make(interval=3, sync=sync, clock=c)
    for step in range(7):
        n0 = len(calls)
        t.begin_step(step)
        with t.phase("rollout_decode"):
            c.tick(10)
        m = t.end_step()
        sampled = step % 3 == 0
        assert len(calls) - n0 == (4 if sampled else 0)
        assert m["time/synced"] == float(sampled)
        # Sampled: the entry wait drains what ran before (other), the exit wait the phase's own
        # work (the phase's), the end_step wait the work issued after the last phase (other).
        assert m["time/rollout_decode_s"] == (15e-9 if sampled else 10e-9)
        assert m["time/other_s"] == (10e-9 if sampled else 0.0)


def test_interval_zero_never_syncs_and_cpu_needs_no_sync():
    calls = []
    t = make(interval=0, sync=lambda: calls.append(1))
    for step in range(3):
        t.begin_step(step)
        with t.phase("update"):
            pass
        assert t.end_step()["time/synced"] == 0.0
    assert calls == []
    assert device_sync("cpu") is None and callable(device_sync("cuda:0"))
    cpu = PhaseTimer(TimingConfig(sync_interval=1), "cpu", clock=FakeClock())
    cpu.begin_step(0)
    assert cpu.end_step()["time/synced"] == 1.0  # host time is device time


def test_module_level_phase_times_into_the_open_step_only():
    c = FakeClock()
    t = make(clock=c)
    with phase("rollout_prefill"):  # no step open: nothing to time into
        c.tick(100)
    t.begin_step(0)
    with phase("rollout_prefill"):
        c.tick(9)
    m = t.end_step()
    with phase("rollout_prefill"):
        c.tick(100)
    assert m["time/rollout_prefill_s"] == 9e-9 and t.step_s == 9e-9


def test_misuse_is_a_clear_error():
    t = make()
    with pytest.raises(RuntimeError, match="outside a step"):
        with t.phase("update"):
            pass
    with pytest.raises(RuntimeError, match="without begin_step"):
        t.end_step()
    t.begin_step(0)
    with pytest.raises(ValueError, match="unknown phase 'rollout'.*rollout_prefill, rollout_decode"):
        t.phase("rollout")
    with pytest.raises(RuntimeError, match="while a step is open"):
        t.begin_step(1)
    with t.phase("update"):
        with pytest.raises(RuntimeError, match="inside phase 'update'"):
            t.end_step()


def test_abort_drops_a_half_done_step():
    c = FakeClock()
    t = make(clock=c)
    t.begin_step(0)
    with pytest.raises(ZeroDivisionError):
        with t.phase("update"):
            with t.phase("comm"):
                c.tick(5)
                1 / 0
    t.abort_step()
    with phase("eval"):  # detached: no step open
        c.tick(100)
    t.begin_step(1)
    c.tick(3)
    m = t.end_step()
    assert m["time/update_s"] == 0.0 and m["time/comm_s"] == 0.0 and m["time/other_s"] == 3e-9
    assert t.summary()["steps"] == 1


@pytest.mark.parametrize("kw, msg", [({"sync_interval": -1}, "timing.sync_interval=-1 must be >= 0"),
                                     ({"energy": "gpu"}, "timing.energy='gpu'; valid: auto, nvml, rapl, off")])
def test_bad_timing_config_names_value_and_choices(kw, msg):
    with pytest.raises(BadInput, match=msg):
        PhaseTimer(TimingConfig(**kw))


def test_summary_totals_phases_over_steps():
    c = FakeClock()
    t = make(clock=c)
    for step in range(3):
        t.begin_step(step)
        with t.phase("score"):
            c.tick(step + 1)
        c.tick(2)
        t.end_step()
    s = t.summary()
    assert s["steps"] == 3 and s["phases_s"]["score"] == 6e-9 and s["phases_s"]["other"] == 6e-9
    assert s["step_s_total"] == 12e-9 and s["phases_frac"]["score"] == 0.5


def test_energy_meter_is_read_at_the_step_boundaries():
    class Meter:
        def __init__(self):
            self.log = []

        def begin(self):
            self.log.append("begin")

        def end(self, tokens):
            self.log.append(("end", tokens))
            return {"energy/step_j": 2.0, "energy/j_per_token": 2.0 / tokens}

    meter = Meter()
    t = make(energy=meter)
    t.begin_step(0)
    m = t.end_step(tokens=8)
    assert meter.log == ["begin", ("end", 8)] and m["energy/j_per_token"] == 0.25


def test_real_clock_phases_cover_the_step_on_cpu():
    t = PhaseTimer(TimingConfig(), "cpu")
    t.begin_step(0)
    for name in ("refit", "rollout_decode", "update"):
        with t.phase(name):
            time.sleep(0.02)
    m = t.end_step()
    assert all(m[f"time/{p}_s"] >= 0.02 for p in ("refit", "rollout_decode", "update"))
    assert 0 <= m["time/other_frac"] < 0.05  # only the loop's own microseconds are outside a phase
    assert sum(m[f"time/{p}_s"] for p in PHASES) == pytest.approx(t.step_s, rel=1e-12)


def test_overhead_benchmark_reports_finite_positive_costs():
    out = overhead_ns(n=2000, repeats=2)
    assert set(out) == {"phase_ns", "nested_phase_ns", "module_phase_ns", "perf_counter_pair_ns"}
    assert all(0 < v < 1e6 for v in out.values())


def test_timed_collectives_charge_comm_and_restore_the_module():
    c = FakeClock()
    calls = []

    def all_reduce(t, async_op=False):
        calls.append(async_op)
        c.tick(7)

    fake = types.SimpleNamespace(all_reduce=all_reduce, broadcast=all_reduce)
    t = make(clock=c)
    t.begin_step(0)
    with timed_collectives(fake):
        with timed_collectives(fake):  # nested blocks wrap once
            with t.phase("update"):
                c.tick(10)
                fake.all_reduce(None)
                fake.broadcast(None, async_op=True)  # overlapped: not an interval of comm
    m = t.end_step()
    assert fake.all_reduce is all_reduce and fake.broadcast is all_reduce
    assert calls == [False, True]
    assert m["time/comm_s"] == 7e-9 and m["time/update_s"] == 17e-9


def _gloo_worker(rank: int, store: str, out: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    dist.barrier()  # start the timed step together
    t = PhaseTimer(TimingConfig(sync_interval=1), "cpu")
    x = torch.full((4,), float(rank + 1))
    t.begin_step(0)
    with timed_collectives():
        with t.phase("update"):
            if rank == 1:
                time.sleep(0.1)  # rank 0 waits for it inside the all_reduce
            dist.all_reduce(x)
            parts = [torch.zeros(4) for _ in range(2)]
            dist.all_gather(parts, x)
            dist.broadcast(x, src=0)
    m = t.end_step()
    # bench's own helpers call dist.<name> through the module: caught the same way
    from bench.train.distributed import DistInfo, mean
    from bench.rl.rollout_shards import gather_rows

    info = DistInfo(rank=rank, world=2)
    t.begin_step(1)
    with timed_collectives():
        with t.phase("score"):
            rows = gather_rows([torch.full((2, 3), float(rank))], info)[0]
            avg = mean(float(rank), info)
    helpers = t.end_step()
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"m": m, "x": x.tolist(), "helpers": helpers, "rows": rows.tolist(), "avg": avg}, f)


@pytest.mark.slow
def test_gloo_collectives_show_nonzero_comm_time(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "out")
    mp.spawn(_gloo_worker, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    res = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert all(r["x"] == [3.0] * 4 for r in res)
    assert all(r["m"]["time/comm_s"] > 0 for r in res)
    assert res[0]["m"]["time/comm_s"] > 0.05  # the wait for rank 1 is comm, not update
    assert res[0]["m"]["time/update_s"] < res[0]["m"]["time/comm_s"]
    assert res[1]["m"]["time/update_s"] >= 0.1  # rank 1's sleep stays in update
    for r in res:
        assert r["rows"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2 and r["avg"] == 0.5
        assert r["helpers"]["time/comm_s"] > 0  # 0 if the helpers' collectives escaped the wrapper


@pytest.mark.gpu
def test_cuda_sampled_steps_charge_kernels_to_their_phase():
    """On CUDA a sampled step's phase holds its kernels' device time; an unsampled step's phase
    only the launches (the work lands in whatever next waits: here end_step's caller)."""
    dev = torch.device("cuda")
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = PhaseTimer(TimingConfig(sync_interval=2), dev)
    out = []
    for step in range(4):
        t.begin_step(step)
        with t.phase("update"):
            for _ in range(20):
                y = x @ x
        out.append(t.end_step())
        torch.cuda.synchronize()
    assert [m["time/synced"] for m in out] == [1.0, 0.0, 1.0, 0.0]
    assert out[2]["time/update_s"] > 5 * out[3]["time/update_s"]
    assert y.shape == x.shape
