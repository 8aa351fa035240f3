"""Which wandb mode a run gets, and the one warning when `online` cannot be: no network here.

wandb.init is replaced by a recorder in every test, so nothing can log in or upload; HOME and
NETRC point into tmp_path, so the machine's own ~/.netrc (if any) never decides a result.
"""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bench.run.logger import WandbSink


class Recorder:
    """Stands in for wandb.init: keeps its kwargs, returns a run that accepts everything."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        self.calls.append(kw)
        return self

    id = "recorded"

    def define_metric(self, *a, **k):
        pass


@pytest.fixture
def init(monkeypatch, tmp_path):
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # absent unless a test writes it
    rec = Recorder()
    monkeypatch.setattr(wandb, "init", rec)
    return rec


def sink(mode: str, run_dir) -> None:
    run_dir.mkdir()  # the session made it before the logger
    WandbSink(OmegaConf.create({"mode": mode, "project": "p", "entity": None, "group": None}), run_dir,
              {"recipe": "pretrain", "run_name": "r"}, resume=False)


def warnings(capsys) -> list[str]:
    return [l for l in capsys.readouterr().err.splitlines() if l.strip()]


@pytest.mark.parametrize("how", ["config", "env"])
def test_online_without_an_api_key_runs_offline_and_says_so_in_one_line(how, init, monkeypatch, tmp_path, capsys):
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "online")
    sink("online" if how == "config" else "auto", tmp_path / "run")
    assert [c["mode"] for c in init.calls] == ["offline"]  # explicit: wandb never tries to log in
    lines = warnings(capsys)
    asked = "logger.wandb.mode=online" if how == "config" else "WANDB_MODE=online"
    assert len(lines) == 1 and lines[0].startswith(f"fp8bench: warning: {asked} but no wandb API key"), lines
    assert "logs to wandb offline" in lines[0] and "wandb login" in lines[0]
    assert f"wandb sync {tmp_path / 'run' / 'wandb'}/offline-run-*" in lines[0]


def test_a_netrc_entry_for_the_wandb_host_counts_as_an_api_key(init, tmp_path, capsys):
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    sink("online", tmp_path / "run")
    assert [c["mode"] for c in init.calls] == ["online"] and warnings(capsys) == []


def test_a_netrc_entry_for_another_host_does_not(init, monkeypatch, tmp_path, capsys):
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    sink("online", tmp_path / "run")
    assert [c["mode"] for c in init.calls] == ["offline"]
    assert "no .netrc entry for wandb.example.org" in warnings(capsys)[0]


def test_auto_without_a_key_is_offline_quietly_and_with_one_online(init, monkeypatch, tmp_path, capsys):
    sink("auto", tmp_path / "a")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    sink("auto", tmp_path / "b")
    assert [c["mode"] for c in init.calls] == ["offline", "online"] and warnings(capsys) == []


def test_auto_follows_wandb_mode_disabled_and_the_config_beats_the_variable(init, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sink("auto", tmp_path / "a")  # disabled: wandb.init is never called
    sink("offline", tmp_path / "b")
    assert [c["mode"] for c in init.calls] == ["offline"] and warnings(capsys) == []
