"""Instability detection: robust spike scores, every action an event, fallback bookkeeping."""
import math

import pytest

from bench.core.errors import BadInput
from bench.numerics.policy import InstabilityPolicy, PolicyConfig, SpikeDetector


def policy(action, signals=("loss", "grad_norm"), **kw):
    """A policy whose events land in a list, as dicts (the events.jsonl lines)."""
    events = []
    cfg = PolicyConfig(action=action, **{"spike_window": 20, "spike_z": 6.0, "spike_min_history": 10, **kw})
    return InstabilityPolicy(cfg, lambda ev: events.append(ev.to_dict()), signals), events


def test_robust_z_score_matches_median_and_mad():
    d = SpikeDetector(window=5, z=6, min_history=5)
    for v in [1.0, 2.0, 3.0, 4.0, 100.0]:
        d.push(v)
    # median 3, |dev| = [2,1,0,1,97] -> MAD 1
    assert d.score(10.0) == pytest.approx((10 - 3) / (1.4826 * 1 + 1e-12 + 3e-6), rel=1e-9)


def test_no_spike_score_before_min_history():
    d = SpikeDetector(window=50, z=6, min_history=10)
    for v in range(5):
        d.push(float(v))
    assert d.score(1e9) == 0.0


@pytest.mark.parametrize("action,skip,halt", [("log", False, False), ("skip_step", True, False),
                                               ("halt", False, False), ("fallback", True, False)])
def test_loss_spike_becomes_event_with_the_policy_action_and_halt_only_logs_it(action, skip, halt):
    p, events = policy(action)
    for i in range(15):
        assert not p.check(i, 1.0 + 0.01 * (i % 3), 1.0, 0).skip
    d = p.check(15, 50.0, 1.0, 0)
    assert (d.skip, d.halt) == (skip, halt)
    kinds = [e["kind"] for e in events]
    assert events[0]["stat"] == "z"  # a z-score, never to be read as a loss
    expected = {"fallback": "skip_step", "halt": "log"}.get(action, action)
    assert kinds[0] == "loss_spike" and events[0]["action"] == expected
    if halt:
        assert kinds[-1] == "halt"
    if skip:
        assert kinds[-1] == "skip_step"


def test_spikes_stay_out_of_the_baseline_window():
    p, _ = policy("log")
    for i in range(15):
        p.check(i, 1.0 + 0.01 * (i % 3), 1.0, 0)
    n = len(p.loss.values)
    p.check(15, 50.0, 1.0, 0)
    assert len(p.loss.values) == n


@pytest.mark.parametrize("loss,grad,acts,where", [(math.nan, 1.0, 0, "loss"), (1.0, math.inf, 0, "grad_norm"),
                                                   (1.0, 1.0, 3, "activations")])
def test_nonfinite_values_are_events(loss, grad, acts, where):
    p, events = policy("skip_step")
    d = p.check(0, loss, grad, acts)
    assert d.skip and events[0]["kind"] == "nonfinite" and events[0]["where"] == where


def test_overflow_detection_under_fallback_names_the_module():
    p, events = policy("fallback", overflow_frac=1e-3)
    recs = {("layers.1.mlp.down", "input"): {"overflow_frac": 0.01, "underflow_frac": 0.0},
            ("layers.0.attn.q", "weight"): {"overflow_frac": 0.0, "underflow_frac": 0.0}}
    det = p.numerics_detections(recs)
    assert det == [("overflow", "layers.1.mlp.down", "input", 0.01)]
    d = p.check(3, 1.0, 1.0, 0, det)
    assert d.fallback == ["layers.1.mlp.down"] and not d.skip
    assert events[0] == {"step": 3, "kind": "overflow", "where": "layers.1.mlp.down/input", "value": 0.01,
                         "threshold": 1e-3, "action": "fallback", "stat": "frac"}


def test_unknown_action_is_bad_input():
    with pytest.raises(BadInput, match="valid: log, skip_step, fallback, halt"):
        policy("explode")


def test_detector_state_round_trips():
    p, _ = policy("log")
    for i in range(12):
        p.check(i, float(i), 1.0, 0)
    q, _ = policy("log")
    q.load_state_dict(p.state_dict())
    assert list(q.loss.values) == list(p.loss.values)


@pytest.mark.parametrize("spikes", [(), ("grad_norm",)])
def test_spike_detectors_run_only_for_the_recipes_spike_signals(spikes):
    events = []
    p = InstabilityPolicy(PolicyConfig(action="halt", spike_window=20, spike_z=6.0, spike_min_history=10),
                          lambda ev: events.append(ev.to_dict()), ("grad_norm", "reward", "entropy"), spikes=spikes)
    for i in range(15):
        p.check(i, 1e-3 * (i % 3), 1.0 + 0.01 * (i % 3), 0)
    assert not p.check(15, 50.0, 1.0, 0).halt and events == []  # never a loss spike here
    assert not p.check(16, 0.0, 80.0, 0).halt  # a spike under halt is logged; trends halt
    assert [e["kind"] for e in events] == (["grad_spike"] if spikes else [])
    assert p.check(17, math.nan, 1.0, 0).halt  # nonfinite is always checked


@pytest.mark.parametrize("knob,value,needle", [
    ("diverge_window", 0, "policy.diverge_window=0 must be a positive integer; valid: 1, 2, ..."),
    ("spike_min_history", 80, "policy.spike_min_history=80 exceeds policy.spike_window=50"),
    ("overflow_frac", 1.5, "policy.overflow_frac=1.5 is a fraction; valid: 0..1"),
    ("loss_rise", 0.0, "policy.loss_rise=0.0 must be positive; valid: > 0"),
    ("grad_growth", 0.5, "policy.grad_growth=0.5 is a ratio of grad-norm medians; valid: > 1"),
])
def test_bad_policy_knobs_are_one_line_of_bad_input(knob, value, needle):
    with pytest.raises(BadInput) as e:
        InstabilityPolicy(PolicyConfig(**{knob: value}), lambda ev: None)
    assert str(e.value) == needle or needle in str(e.value)
    assert "\n" not in str(e.value)
