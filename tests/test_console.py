"""What the console shows: progress lines, sweep-job prefixes, repeated events summarised, and
exactly two known third-party start-up warnings filtered."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from bench.config.schema import LoggerConfig
from bench.run.logger import RepeatedEvents, RunLogger
from helpers import ROOT

NOISE = ("Failed to load", "is an Enum subclass")


def logger_cfg(**kw):
    cfg = OmegaConf.structured(LoggerConfig)
    cfg.wandb.mode = "disabled"
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def event(step: int, where: str = "layers.0.mlp.down/input", kind: str = "overflow", action: str = "log") -> dict:
    return {"step": step, "kind": kind, "where": where, "value": 0.01, "threshold": 0.001, "action": action}


def test_a_short_run_prints_its_first_and_last_step(tmp_path, capsys):
    log = RunLogger(tmp_path, logger_cfg(), {"run_name": "r"}, total_steps=20)
    for k in range(20):
        log.log_metrics(k, {"train/loss": 1.0 / (k + 1)})
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[1] for l in lines if l.startswith("step")] == ["0", "19"]  # console_every=25


def test_sweep_jobs_prefix_every_line_with_the_job_name(tmp_path, capsys):
    run_dir = tmp_path / "3_precision=bf16,seed=1"
    run_dir.mkdir()
    log = RunLogger(run_dir, logger_cfg(console_every=1), {"run_name": "r", "sweep": "sweep_x"}, total_steps=2)
    log.log_metrics(0, {"train/loss": 2.0})
    log.log_eval(1, {"eval/addition/accuracy": 0.5})
    log.log_event(event(1))
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(l.startswith("[3_precision=bf16,seed=1] ") for l in lines), lines


def test_no_prefix_outside_a_sweep(tmp_path, capsys):
    log = RunLogger(tmp_path, logger_cfg(), {"run_name": "r"}, total_steps=1)
    log.log_metrics(0, {"train/loss": 2.0})
    log.close()
    assert capsys.readouterr().out.startswith("step     0  loss=2")


def test_repeated_events_print_first_then_counts_then_the_rest_at_close(tmp_path, capsys):
    log = RunLogger(tmp_path, logger_cfg(events_every=100), {"run_name": "r"}, total_steps=300)
    for k in range(250):
        log.log_event(event(k))
    log.log_event(event(7, where="layers.1.attn.q/input"))
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("event @ 0: overflow at layers.0.mlp.down/input")
    assert lines[1].startswith("event x100: overflow at layers.0.mlp.down/input since step 0 (last @ 99:")
    assert lines[2].startswith("event x200:")
    assert lines[3].startswith("event @ 7: overflow at layers.1.attn.q/input")
    assert lines[4].startswith("event x250:") and "(last @ 249:" in lines[4]
    assert len(lines) == 5
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 251  # the file keeps every one


def test_a_halt_is_always_printed():
    r = RepeatedEvents(every=100)
    assert r.show(event(0), "first") == "first"
    assert r.show(event(1, action="halt"), "halt line") == "halt line"
    assert r.show(event(2), "again") is None


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300).stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the .so filter applies without CUDA only")
def test_torchao_start_up_noise_is_filtered_and_nothing_else():
    raw = run_python("import torchao")
    if not any(n in raw for n in NOISE):
        pytest.skip("this torchao/torch prints neither warning: nothing to filter")
    quiet = run_python("import bench.run.logger, torchao, logging\n"
                       "logging.getLogger('torchao').warning('torchao says something else')\n"
                       "logging.getLogger('torch.utils._pytree').warning('pytree says something else')")
    assert not any(n in quiet for n in NOISE), quiet
    assert "torchao says something else" in quiet and "pytree says something else" in quiet


def test_the_filters_are_installed_once_on_their_own_loggers():
    from bench.run.logger import filter_known_noise

    filter_known_noise()
    filter_known_noise()
    assert len(logging.getLogger("torch.utils._pytree").filters) == 1
    assert not logging.getLogger().filters  # the root logger is never touched


def test_a_job_name_is_its_run_dir_below_the_sweep_dir():
    from pathlib import Path

    from bench.run.logger import job_name

    assert job_name(Path("runs/grpo/sweep_1/0_seed=0"), "sweep_1") == "0_seed=0"
    # an override whose value is a path puts `/` into Hydra's job folder name
    assert job_name(Path("/t/sweep/2_seed=1,warmup.cache_dir=/w/runs/cache"), "sweep") == \
        "2_seed=1,warmup.cache_dir=/w/runs/cache"
    assert job_name(Path("runs/x/run"), None) is None
