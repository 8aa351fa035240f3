"""Per-run time/energy figures and the variant-vs-baseline line, on hand-made metrics rows."""
from __future__ import annotations

import sys

import pytest

from bench.perf.cost import cost_delta, cost_line, run_cost, split_table
from bench.perf.timing import PHASES


def row(step, synced=1.0, tokens_per_s=100.0, **phases):
    r = {"step": step, "train/tokens_per_s": tokens_per_s, "time/synced": synced}
    for p in PHASES:
        r[f"time/{p}_s"] = phases.get(p, 0.0)
    return r


def test_run_cost_means_synced_steps_after_the_skipped_ones():
    rows = [row(0, rollout_decode=9.0, update=9.0),          # skipped: warm-up
            row(1, rollout_decode=2.0, rollout_prefill=0.5, update=1.0, other=0.5),
            row(2, synced=0.0, rollout_decode=0.1, update=5.0),  # host time only: not in the split
            row(3, rollout_decode=4.0, rollout_prefill=0.5, update=1.0, other=0.5, tokens_per_s=50.0)]
    c = run_cost(rows, None, skip=1)
    assert c["steps"] == 2
    assert c["phase_s"]["rollout_decode"] == 3.0 and c["phase_s"]["update"] == 1.0
    assert c["rollout_s"] == 3.5 and c["step_s"] == 5.0
    assert c["tokens_per_s"] == (100.0 + 100.0 + 50.0) / 3  # throughput: every logged step
    assert c["j_per_token"] is None


def test_energy_per_token_prefers_the_summary_total():
    rows = [row(0), {**row(1), "energy/j_per_token": 2.0}, {**row(2), "energy/j_per_token": 4.0}]
    assert run_cost(rows, {"energy": {"source": "nvml", "total_j": 9.0, "j_per_token": 2.5}})["j_per_token"] == 2.5
    assert run_cost(rows, {"energy": {"source": None, "unavailable": "x"}})["j_per_token"] == 3.0


def test_rows_without_phase_timing_fall_back_to_step_time():
    rows = [{"step": i, "train/step_time_s": float(i), "train/tokens_per_s": 1.0} for i in range(4)]
    c = run_cost(rows)
    assert c["step_s"] == 2.0 and c["phase_s"] == {} and c["rollout_s"] is None


def test_delta_and_line_show_saving_beside_accuracy():
    base = run_cost([row(0), row(1, rollout_decode=6.0, rollout_prefill=2.0, update=2.0, tokens_per_s=100.0)],
                    {"energy": {"source": "nvml", "j_per_token": 0.5}})
    fp8 = run_cost([row(0), row(1, rollout_decode=3.0, rollout_prefill=1.0, update=2.0, tokens_per_s=125.0)],
                   {"energy": {"source": "nvml", "j_per_token": 0.4}})
    d = cost_delta(base, fp8)
    assert d["rollout"] == pytest.approx(-0.5) and d["step"] == pytest.approx(-0.4)
    assert d["tokens_per_s"] == pytest.approx(0.25) and d["j_per_token"] == pytest.approx(-0.2)
    assert d["phases"]["update"] == 0.0 and d["phases"]["eval"] is None  # 0 s on both sides: no ratio
    assert cost_line("bf16/fp8", d, -0.0125) == ("bf16/fp8: rollout -50.0%, step -40.0%, tokens/s +25.0%, "
                                                 "energy/token -20.0%, accuracy -0.013")


def test_unmeasured_energy_is_left_out_not_zero():
    a = run_cost([row(0), row(1, update=1.0)], {"energy": {"source": None, "unavailable": "no RAPL"}})
    line = cost_line("x", cost_delta(a, a))
    assert "energy" not in line and "step +0.0%" in line


def test_split_table_shows_only_phases_that_took_time():
    c = run_cost([row(0), row(1, rollout_decode=3.0, update=1.0)])
    t = split_table({"bf16/bf16": c})
    assert t.splitlines()[0] == "| variant | step ms | rollout_decode | update |"
    assert t.splitlines()[2] == "| bf16/bf16 | 4000.0 | 75.0% | 25.0% |"


def test_cost_module_needs_no_torch():
    import subprocess

    code = "import sys, bench.perf.cost; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
