"""Trend detectors: each fires on its sustained failure, with its statistic labelled, once per
episode, not on noise around a healthy run; `halt` acts on them, other actions only log."""
import math
import statistics

import pytest

from bench.numerics.divergence import DivergenceWatch
from bench.numerics.policy import InstabilityPolicy, PolicyConfig


def watch(**kw):
    args = {"window": 5, "loss_rise": 1.0, "grad_growth": 10.0, "acc_drop": 0.3, "reward_drop": 0.3,
            "entropy_frac": 0.1, **kw}
    return DivergenceWatch(**args)


def feed(w, key, values):
    """Findings per step for one signal."""
    out = []
    for v in values:
        out.append(w.step(**{"loss": None, "grad_norm": None, "reward": None, "entropy": None, key: v}))
    return out


def test_loss_divergence_needs_a_full_window_above_the_running_minimum():
    w = watch()
    losses = [5.0, 3.0, 2.0, 3.5, 3.5, 3.5, 3.5, 3.5]  # min 2.0; 1.5 nats above it from step 3 on
    found = feed(w, "loss", losses)
    assert [i for i, f in enumerate(found) if f] == [7]  # steps 3..7: the 5th consecutive one
    (f,) = found[7]
    assert (f.kind, f.stat, f.value, f.threshold) == ("loss_divergence", "loss-min", 1.5, 1.0)


def test_loss_divergence_fires_once_per_episode_and_rearms_after_recovery():
    w = watch(window=2)
    found = feed(w, "loss", [1.0, 3.0, 3.0, 3.0, 3.0, 1.5, 3.0, 3.0])
    assert [i for i, f in enumerate(found) if f] == [2, 7]


def test_a_noisy_but_healthy_loss_never_diverges():
    w = watch(window=5)
    losses = [4.0 * math.exp(-i / 30) + 0.3 + 0.4 * ((i * 7919) % 13 / 13 - 0.5) for i in range(300)]
    assert not any(feed(w, "loss", losses))


def test_nonfinite_loss_counts_as_above_the_minimum():
    w = watch(window=3)
    found = feed(w, "loss", [2.0, math.nan, math.inf, math.nan])
    assert found[3] and found[3][0].value == math.inf


def test_grad_divergence_is_the_window_median_over_the_smallest_earlier_median():
    w = watch(window=3, grad_growth=10.0)
    grads = [1.0, 2.0, 0.5, 0.4, 0.6, 30.0, 40.0, 50.0]
    found = feed(w, "grad_norm", grads)
    medians = [statistics.median(grads[i - 2:i + 1]) for i in range(2, len(grads))]
    first = next(i for i, f in enumerate(found) if f)
    k = first - 2
    ratio = medians[k] / min(medians[:k])
    assert ratio > 10 and all(medians[j] / min(medians[:j]) <= 10 for j in range(1, k))
    assert found[first][0].value == pytest.approx(ratio) and found[first][0].stat == "median/min_median"


def test_reward_collapse_needs_a_drop_from_the_best_and_a_fall_below_the_start():
    w = watch(window=3)
    found = feed(w, "reward", [0.5, 0.0, 0.0, 0.0])
    assert [i for i, f in enumerate(found) if f] == [2]  # the first full window: mean 1/6, best 0.5
    (f,) = found[2]
    assert (f.kind, f.stat, f.value) == ("reward_collapse", "best-mean", pytest.approx(0.5 - 0.5 / 3))
    # Learned to 0.9, then back to 0.5: a drop of 0.4 from the best, but still above the start.
    w = watch(window=3)
    assert not any(feed(w, "reward", [0.45, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5]))


def test_entropy_collapse_is_sharpening_that_bought_no_reward():
    w = watch(window=3, entropy_frac=0.1)
    found = [w.step(None, None, r, h) for r, h in [(0.4, 1.0), (0.0, 0.01), (0.0, 0.01), (0.0, 0.01)]]
    kinds = [f.kind for f in found[3]]
    assert "entropy_collapse" in kinds
    e = found[3][kinds.index("entropy_collapse")]
    assert e.stat == "mean/start" and e.value == pytest.approx(0.01)  # mean of the last 3 over the start 1.0
    w = watch(window=3, entropy_frac=0.1)  # the same sharpening while the reward rose: learning
    assert not any(w.step(None, None, r, h) for r, h in [(0.4, 1.0), (0.9, 0.01), (0.9, 0.01), (0.9, 0.01)])


def test_accuracy_collapse_against_best_and_start():
    w = watch(acc_drop=0.3)
    assert w.evaluation({"eval/t/accuracy": 0.5, "eval/loss": 2.0}) == []
    assert w.evaluation({"eval/t/accuracy": 0.9}) == []
    assert w.evaluation({"eval/t/accuracy": 0.55}) == []  # 0.35 below the best, above the start
    (f,) = w.evaluation({"eval/t/accuracy": 0.1})
    assert (f.kind, f.where, f.stat, f.value) == ("accuracy_collapse", "eval/t/accuracy", "best-acc", pytest.approx(0.8))


def test_state_round_trip_continues_the_same_episode():
    a, b = watch(), watch()
    losses = [2.0, 1.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    fa = feed(a, "loss", losses)
    feed(b, "loss", losses[:4])
    c = watch()
    c.load_state_dict(b.state_dict())
    assert feed(c, "loss", losses[4:]) == fa[4:]


def policy(action, signals=("loss", "grad_norm")):
    events = []
    cfg = PolicyConfig(action=action, diverge_window=3)
    return InstabilityPolicy(cfg, lambda ev: events.append(ev.to_dict()), signals), events


@pytest.mark.parametrize("action,halts", [("halt", True), ("log", False), ("skip_step", False), ("fallback", False)])
def test_halt_acts_on_a_divergence_and_other_actions_log_it(action, halts):
    p, events = policy(action)
    decisions = [p.watch(i, {"train/loss": v, "train/grad_norm": 1.0}) for i, v in enumerate([1.0, 5.0, 5.0, 5.0])]
    assert decisions[3].halt == halts and not any(d.halt for d in decisions[:3])
    div = [e for e in events if e["kind"] == "loss_divergence"]
    assert len(div) == 1 and div[0]["action"] == ("halt" if halts else "log") and div[0]["stat"] == "loss-min"
    assert [e["kind"] for e in events].count("halt") == int(halts)


def test_grpo_signals_do_not_watch_the_policy_loss():
    p, events = policy("halt", signals=("grad_norm", "reward", "entropy"))
    for i, v in enumerate([0.0, 5.0, 5.0, 5.0, 5.0]):
        assert not p.watch(i, {"train/loss": v, "rollout/reward_mean": 0.5, "rl/entropy": 1.0}).halt
    assert events == []


def test_eval_regression_is_logged_against_the_best_and_the_collapse_halts():
    p, events = policy("halt")
    assert not p.watch_eval(0, {"eval/t/accuracy": 0.6}).halt
    assert not p.watch_eval(1, {"eval/t/accuracy": 0.8}).halt
    assert not p.watch_eval(2, {"eval/t/accuracy": 0.65}).halt  # 0.15 below best: regression, logged
    assert [e["kind"] for e in events] == ["eval_regression"] and events[0]["action"] == "log"
    assert p.watch_eval(3, {"eval/t/accuracy": 0.2}).halt
    assert [e["kind"] for e in events][-2:] == ["accuracy_collapse", "halt"]
    assert p.eval_best == {"eval/t/accuracy": 0.8} and len(p.eval_regressions) == 2
