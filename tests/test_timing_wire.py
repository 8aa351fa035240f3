"""The loop's phase timing and energy, end to end (issue 18): every step's `time/*` split adds up
to `train/step_time_s` with a small `other`, the step that evaluates and checkpoints carries that
time, summary.json holds the totals (over a resume too), energy is a number or a reason, and under
torchrun DDP's gradient all-reduce shows up in `comm`."""
import json
import math

import pytest
from omegaconf import OmegaConf

from bench.run.session import _with_row
from bench.perf.timing import PHASES, TimingConfig
from helpers import CONF, read_jsonl, run_cli, run_in_process, run_torchrun

PRETRAIN = ["model.n_layers=2", "batch_size=8", "steps=4", "eval_every=2", "checkpoint_every=2",
            "eval_problems=8", "monitor.interval=2"]
GRPO = ["model.n_layers=2", "steps=3", "eval_every=2", "checkpoint_every=2", "eval_problems=8",
        "grpo.prompts_per_step=4", "grpo.group_size=4", "warmup.steps=10", "monitor.interval=2"]
OTHER_MAX = 0.05  # the share of a step outside every phase ("a few percent")


def check_rows_add_up(rows: list[dict]) -> None:
    for r in rows:
        parts = [r[f"time/{p}_s"] for p in PHASES]
        assert all(v >= 0 for v in parts), r
        # Integer nanoseconds in the timer: the parts are the step up to float rounding.
        assert math.isclose(sum(parts), r["train/step_time_s"], rel_tol=1e-9), r
        assert math.isclose(sum(r[f"time/{p}_frac"] for p in PHASES), 1.0, rel_tol=1e-9)
        assert r["time/other_frac"] < OTHER_MAX, r
        assert r["time/synced"] == 1.0  # CPU: host time is device time


def check_energy(summary: dict, rows: list[dict]) -> None:
    e = summary["energy"]
    if e["source"] is None:
        assert e["unavailable"], e  # a reason, never a number
        assert not any("energy/step_j" in r for r in rows)
    else:
        assert e["total_j"] > 0 and all(r["energy/step_j"] >= 0 for r in rows)


@pytest.mark.slow
def test_pretrain_phases_sum_to_the_step_and_the_eval_step_carries_eval_and_checkpoint(tmp_path):
    assert run_in_process("pretrain", PRETRAIN + [f"run_dir={tmp_path / 'r'}"]) == 0
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    check_rows_add_up(rows)
    assert all(r["time/update_s"] > 0 and r["time/data_wait_s"] > 0 for r in rows)
    evals = {r["step"] for r in rows if r["time/eval_s"] > 0}
    ckpts = {r["step"] for r in rows if r["time/checkpoint_s"] > 0}
    assert evals == ckpts == {1, 3}  # steps done 2 and 4
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    t = summary["time"]
    assert t["steps"] == 4
    assert math.isclose(t["step_s_total"], sum(r["train/step_time_s"] for r in rows), rel_tol=1e-9)
    check_energy(summary, rows)


@pytest.mark.slow
def test_grpo_phases_sum_to_the_step_and_rollout_score_update_are_timed(tmp_path):
    args = GRPO + [f"warmup.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'r'}"]
    assert run_in_process("grpo", args) == 0
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    check_rows_add_up(rows)
    for r in rows:
        for p in ("refit", "rollout_prefill", "rollout_decode", "score", "update", "monitor"):
            assert r[f"time/{p}_s"] > 0, (p, r)
        assert r["time/comm_s"] == 0.0  # one process: no collective
        # tokens/s is over the row's own step time (eval and checkpoint included): 16 rows of P + N
        n = r["train/tokens_per_s"] * r["train/step_time_s"]
        assert n == pytest.approx(round(n), rel=1e-9) and round(n) % 16 == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["time"]["steps"] == 3
    check_energy(summary, rows)


@pytest.mark.slow
def test_resume_keeps_the_row_written_after_its_checkpoint_and_the_totals_cover_the_run(tmp_path):
    run = tmp_path / "r"
    assert run_in_process("pretrain", PRETRAIN + [f"run_dir={run}", "stop_after=2"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1]
    assert run_in_process("pretrain", PRETRAIN + [f"run_dir={run}", "resume=true"]) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 1's row (after its checkpoint) kept
    t = json.loads((run / "summary.json").read_text())["time"]
    assert t["steps"] == 4
    assert math.isclose(t["step_s_total"], sum(r["train/step_time_s"] for r in rows), rel_tol=1e-6)


@pytest.mark.slow
def test_two_process_ddp_charges_the_gradient_all_reduce_to_comm(tmp_path):
    args = ["recipes.pretrain", "precision=fp32", "model.n_layers=2", "batch_size=8", "steps=3", "eval_every=3",
            "checkpoint_every=3", "eval_problems=8", "logger=disabled", "threads=1", f"run_dir={tmp_path / 'r'}"]
    r = run_torchrun(args)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert len(rows) == 3
    check_rows_add_up(rows)
    assert all(row["time/comm_s"] > 0 for row in rows)


def test_a_row_after_the_checkpoint_is_kept_only_when_it_is_the_pending_steps_complete_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    head = b'{"step": 0}\n'
    f.write_bytes(head + b'{"step": 1, "x": 2}\n{"step": 2}\n')
    assert _with_row(f, len(head), 1) == len(head) + len(b'{"step": 1, "x": 2}\n')
    assert _with_row(f, len(head), 2) == len(head)  # the next line is another step's
    f.write_bytes(head + b'{"step": 1, "x"')  # torn by a kill: not a row
    assert _with_row(f, len(head), 1) == len(head)
    assert _with_row(tmp_path / "missing.jsonl", 5, 1) == 5


def test_timing_group_file_holds_no_schema_default():
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "timing" / "default.yaml")) or {}
    defaults = OmegaConf.to_container(OmegaConf.structured(TimingConfig))
    assert not [k for k, v in raw.items() if defaults.get(k) == v]


DDP_ONE_RANK = """
import sys
import torch
import torch.distributed as dist

from bench.train import distributed
from bench.perf.timing import PhaseTimer, TimingConfig

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
try:
    torch.manual_seed(0)
    model, ref = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    ref.load_state_dict(model.state_dict())
    ddp = distributed.wrap(model, distributed.DistInfo(rank=0, world=2))  # enabled: DDP over the 1-rank group
    x = torch.randn(5, 4)
    timer = PhaseTimer(TimingConfig(), "cpu")
    timer.begin_step(0)
    with timer.phase("update"):
        ddp(x).pow(2).sum().backward()
    m = timer.end_step()
    ref(x).pow(2).sum().backward()
    assert m["time/comm_s"] > 0, m
    assert torch.equal(model.weight.grad, ref.weight.grad) and torch.equal(model.bias.grad, ref.bias.grad)
finally:
    dist.destroy_process_group()
print("ok")
"""


def test_ddp_gradient_all_reduce_is_timed_into_comm_and_still_averages(tmp_path):
    """The comm hook (bench.train.distributed.timed_allreduce_hook) in a one-rank gloo group: DDP's
    bucket all-reduce happens inside backward(), is charged to comm (not update), and the
    gradient is the rank mean (one rank: the local gradient, exactly). In its own process with a
    time limit: late in a full-suite run this in-process gloo group once hung (cause not found)."""
    r = run_cli(["-c", DDP_ONE_RANK, str(tmp_path / "store")], timeout=180)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("arg, needle", [("timing.energy=nvml", "timing.energy=nvml: NVML measures NVIDIA GPUs"),
                                         ("timing.sync_interval=-1", "timing.sync_interval=-1 must be >= 0"),
                                         ("timing.energy=gpu", "timing.energy='gpu'; valid: auto, nvml, rapl, off")])
def test_bad_timing_config_is_one_line_before_the_run_dir_exists(tmp_path, arg, needle):
    from bench.core.errors import BadInput

    with pytest.raises(BadInput, match=needle.replace("(", r"\(")):
        run_in_process("pretrain", PRETRAIN + [f"run_dir={tmp_path / 'r'}", arg, "device=cpu"])
    assert not (tmp_path / "r").exists()
