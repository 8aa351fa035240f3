"""One emit path: the session writes Event objects (and, for code not yet converted, dicts that
must make a valid Event); inside a GRPO update the optimizer step rides along as opt_step."""
import pytest

from bench.core.events import Event
from bench.run.session import Session


class Sink:
    def __init__(self):
        self.lines = []

    def log_event(self, d):
        self.lines.append(d)


def session():
    s = object.__new__(Session)  # the emit path only: no config, no run dir
    s.log, s.opt_step, s.summary = Sink(), None, {}
    return s


def test_events_and_dicts_write_the_same_line():
    s = session()
    s.emit(Event(3, "skip_step", "loss_scaler", float("inf"), 1024.0, "skip_step"))
    s.emit({"step": 3, "kind": "skip_step", "where": "loss_scaler", "value": float("inf"), "threshold": 1024.0,
            "action": "skip_step"})
    assert s.log.lines[0] == s.log.lines[1] and set(s.log.lines[0]) == {"step", "kind", "where", "value",
                                                                         "threshold", "action"}


def test_a_dict_with_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown event kind 'lossspike'"):
        session().emit({"step": 0, "kind": "lossspike", "where": "x", "value": 1.0, "threshold": 0.0, "action": "log"})


def test_the_optimizer_step_is_attached_inside_an_update_and_only_there():
    s = session()
    s.opt_step = 41
    s.emit(Event(7, "grad_spike", "grad", 9.0, 8.0, stat="z"))
    s.emit(Event(7, "fallback", "l0", 1.0, 0.0, "fallback", opt_step=40))  # an explicit one is kept
    s.opt_step = None
    s.emit(Event(8, "preempt", "SIGTERM", 8, 0, "checkpoint_and_exit"))
    assert [e.get("opt_step") for e in s.log.lines] == [41, 40, None]
    assert all(e["step"] in (7, 8) for e in s.log.lines) and s.log.lines[0]["stat"] == "z"


def test_the_first_halting_detection_is_recorded_for_the_summary():
    s = session()
    s.emit(Event(5, "loss_divergence", "train/loss", 3.0, 1.0, "halt", stat="loss-min"))
    s.emit(Event(5, "halt", "policy", 1.0, 0.0, "halt"))
    s.emit(Event(6, "grad_divergence", "train/grad_norm", 30.0, 20.0, "halt"))
    assert s.summary["halted_by"]["kind"] == "loss_divergence" and s.summary["halted_by"]["stat"] == "loss-min"
