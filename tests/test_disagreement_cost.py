"""Issue 25: the long-response task, mismatch growth / mismatch_drift, the SYNTHETIC generator
perturbation, and the gate's pairing by seed with its minimum detectable effect. Every check is
against a direct float64 reimplementation (or scipy) that imports none of the code under test."""
from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch
from scipy import stats as sps

from bench.numerics.drift import DriftWatch, growth, series_growth
from bench.report import stats
from bench.tasks import build_task


# --- the long-response task ---------------------------------------------------------------------
def _ref_partial(c: str, a: str) -> float:
    n = max(len(c), len(a))
    return 1.0 if n == 0 else sum(1 for i in range(min(len(c), len(a))) if c[i] == a[i]) / n


@pytest.mark.parametrize("op", ["copy", "reverse", "sort"])
def test_longstr_answers_are_the_op_of_the_prompt_string(op):
    t = build_task({"name": "longstr", "op": op, "length": 512, "alphabet": 5})
    for p in t.problems("train", 20, 3):
        s = p.prompt[:-3]
        assert len(s) == 512 and set(s) <= set("abcde") and p.prompt[-3:] == f":{op[0]}>"
        assert p.answer == {"copy": s, "reverse": s[::-1], "sort": "".join(sorted(s))}[op]
    assert t.seq_len == 1 + 512 + 3 + 512 + 1 and t.prompt_len == 1 + 512 + 3


def test_longstr_partial_score_matches_its_definition_and_exact_is_exact():
    t = build_task({"name": "longstr", "length": 16})
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 20)))
        c = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 20)))
        p = type(t.problems("train", 1, 0)[0])("x", a)
        sc = t.scores(p, c)
        assert sc["partial"] == pytest.approx(_ref_partial(c, a), abs=0)
        assert sc["exact"] == float(c == a)
        assert t.reward(p, c) == sc["partial"] and t.accuracy(p, c) == sc["exact"]
    exact = build_task({"name": "longstr", "length": 16, "score": "exact"})
    assert exact.reward(p, p.answer + "a") == 0.0


def test_eval_logs_exact_accuracy_and_partial_for_longstr():
    from bench.train.eval import answer_scores
    t = build_task({"name": "longstr", "length": 8})
    probs = t.problems("eval", 4, 1)
    answers = [probs[0].answer, probs[1].answer[:-1] + ("a" if probs[1].answer[-1] != "a" else "b"), "", "zz"]
    out = answer_scores(t, probs, answers)
    assert out["eval/longstr/accuracy"] == 0.25
    assert out["eval/longstr/partial"] == pytest.approx((1 + 7 / 8 + 0 + 0) / 4)


def test_longstr_bad_knobs_are_value_errors():
    for bad in ({"op": "shuffle"}, {"length": 0}, {"alphabet": 1}, {"score": "dense"}):
        with pytest.raises(ValueError):
            build_task({"name": "longstr", **bad})


@pytest.mark.parametrize("mode", ["seq_tis", "seq_mask", "geo_mask", "tis", "icepop"])
def test_sequence_is_modes_stay_finite_and_exact_at_512_tokens(mode):
    from bench.rl.importance import importance_weights
    g = torch.Generator().manual_seed(0)
    B, T = 6, 512
    lp_g = -torch.rand(B, T, generator=g) * 3
    lp_t = lp_g + torch.randn(B, T, generator=g) * 0.2   # Σ_t r ~ N(0, 4.5²): exp overflows fp32 unclamped
    lp_t[0] += 0.5                                         # Σ r = +256: far past the clamp
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 300:] = False
    w, m = importance_weights(lp_g, lp_t, mask, mode=mode, cap=2.0, lo=0.5, hi=2.0)
    assert torch.isfinite(w).all() and all(math.isfinite(v) for v in m.values())
    r = (lp_t - lp_g).double() * mask
    seq = np.exp(np.clip(r.sum(1).numpy(), -20, 20))
    if mode == "seq_tis":
        ref = np.minimum(seq, 2.0)[:, None] * mask.numpy()
        np.testing.assert_allclose(w.double().numpy(), ref, rtol=1e-5)
        assert float(w[0, 0]) == 2.0


# --- mismatch growth and mismatch_drift ---------------------------------------------------------
def test_growth_is_last_window_median_over_first_window_median():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, w = int(rng.integers(4, 60)), int(rng.integers(1, 10))
        x = rng.random(n).tolist()
        want = statistics.median(x[-w:]) / statistics.median(x[:w]) if n >= 2 * w else math.nan
        got = growth(x, w)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-12)
    assert math.isnan(growth([0.0] * 20, 5))   # nothing to grow from
    tmpe = [1.01] * 10 + [1.03] * 10
    assert series_growth(tmpe, "token_mult_prob_error", 10) == pytest.approx(3.0)  # on the excess over 1


def test_drift_fires_once_on_an_injected_growing_mismatch():
    watch = DriftWatch(window=10, threshold=2.0, floor_tmpe=0.005, floor_k3=1e-4)
    fired = []
    for step in range(60):
        k3 = 0.010 * (1 + step / 15)   # verl PR 7519's shape: 0.010 -> ~0.03 over 32 steps
        out, crossed = watch.update({"mismatch/gen_kl_k3": k3, "mismatch/token_mult_prob_error": 1.02})
        fired += [(step, c[0]) for c in crossed]
        if step == 19:
            assert out["mismatch/gen_kl_k3_growth"] == pytest.approx(
                statistics.median([0.01 * (1 + s / 15) for s in range(10, 20)]) /
                statistics.median([0.01 * (1 + s / 15) for s in range(10)]))
    assert [m for _, m in fired] == ["gen_kl_k3"]
    # the step that completes a whole window (10 steps) of last-window medians above twice the
    # first window's: the rise is monotone, so 9 steps after the first such step
    first = statistics.median([1 + s / 15 for s in range(10)])
    crosses = next(s for s in range(19, 60) if statistics.median([1 + t / 15 for t in range(s - 9, s + 1)]) > 2 * first)
    assert fired[0][0] == crosses + 9


def test_drift_ignores_a_burst_shorter_than_a_window_and_fires_on_one_that_stays():
    """gen_kl_k3's 10-step median wanders (3 of 25 flat 120-step runs crossed ×2 for 3-6 steps):
    a crossing must hold for a whole window before it is drift."""
    def run(burst_len: int) -> list[int]:
        watch = DriftWatch(window=10, threshold=2.0, floor_tmpe=0.005, floor_k3=1e-4)
        steps = []
        for step in range(120):
            high = 40 <= step < 40 + burst_len + 5  # the window median follows the burst ~5 steps late
            k3 = 3e-3 if high else 1e-3
            steps += [step for c in watch.update({"mismatch/gen_kl_k3": k3})[1]]
        return steps

    assert run(burst_len=4) == []           # above ×2 for 5 steps, then back: noise
    assert run(burst_len=200) == [54]       # stays: the median crosses at step 45, held 10 steps -> 54


def test_drift_never_fires_on_a_flat_noisy_series_or_below_the_floor():
    rng = np.random.default_rng(1)
    watch = DriftWatch(window=10, threshold=2.0, floor_tmpe=0.005, floor_k3=1e-4)
    for _ in range(300):
        _, crossed = watch.update({"mismatch/gen_kl_k3": float(1e-3 * rng.lognormal(0, 0.5)),
                                   "mismatch/token_mult_prob_error": float(1.01 + abs(rng.normal(0, 0.003)))})
        assert not crossed
    tiny = DriftWatch(window=5, threshold=2.0, floor_tmpe=0.005, floor_k3=1e-4)
    for s in range(50):  # grows ×50 but stays below the floor: harmless
        assert not tiny.update({"mismatch/gen_kl_k3": 1e-7 * (1 + s)})[1]


# --- gate pairing by seed -----------------------------------------------------------------------
def test_paired_test_matches_scipy_ttest_rel_on_hand_built_data():
    c = np.array([0.61, 0.55, 0.70, 0.48, 0.66])
    b = np.array([0.64, 0.60, 0.71, 0.52, 0.69])   # seed effects shared: small differences
    d = stats.pair_by_seed(c, [3, 1, 4, 0, 2], b, [3, 1, 4, 0, 2])
    np.testing.assert_allclose(d, (c - b)[np.argsort([3, 1, 4, 0, 2])])
    se, df = stats.paired_se_df(d)
    ref = sps.ttest_rel(c, b)
    assert df == 4 and (c - b).mean() / se == pytest.approx(float(ref.statistic), rel=1e-12)
    dec = stats.welch(c, b, float((c - b).mean()), 0.05, pairs=d)
    assert dec.p_value == pytest.approx(float(sps.ttest_rel(c, b, alternative="less").pvalue), rel=1e-12)
    assert dec.outcome == "regression"                       # paired: the 0.034 drop is clear
    unpaired = stats.welch(c, b, float((c - b).mean()), 0.05)
    assert unpaired.p_value == pytest.approx(float(sps.ttest_ind(c, b, equal_var=False, alternative="less").pvalue),
                                             rel=1e-12)
    assert unpaired.outcome == "pass"                         # Welch cannot see it through the seed spread


def test_pairing_needs_the_same_seeds_each_once():
    c, b = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5, 3.1])
    assert stats.pair_by_seed(c, [0, 1, 2], b, [0, 1, 3]) is None
    assert stats.pair_by_seed(c, [0, 0, 1], b, [0, 0, 1]) is None
    assert stats.pair_by_seed(c[:1], [0], b[:1], [0]) is None
    assert stats.pair_by_seed(c, [0, 1, 2], b, [2, 1, 0]) is not None


def test_noninferiority_paired_uses_the_paired_se_and_min_detectable():
    c = np.array([0.61, 0.55, 0.70, 0.48, 0.66])
    t = np.array([0.64, 0.60, 0.71, 0.52, 0.69]) - 0.05
    d = c - t
    dec = stats.noninferiority(c, t, float(d.mean()), 0.05, pairs=d)
    se = float(np.std(d, ddof=1) / np.sqrt(5))
    assert dec.se == pytest.approx(se, rel=1e-12) and dec.df == 4 and "paired" in dec.method
    assert dec.half_width == pytest.approx(float(sps.t.ppf(0.95, 4)) * se, rel=1e-12)
    mde = stats.min_detectable(0.05, dec.se, dec.df, 0.05)
    assert mde == pytest.approx(0.05 + (sps.t.ppf(0.95, 4) + sps.t.ppf(0.8, 4)) * se, rel=1e-12)


def test_gate_pairs_same_seed_runs_and_the_verdict_prints_the_mde(tmp_path):
    from bench.report import gate as gt
    from bench.report import verdict
    from bench.report.runs import group, load_runs
    from runfixtures import write_matrix
    write_matrix(tmp_path, [{}, {"generator": "fp8_blockwise", "acc_drop": 0.08}], seeds=(0, 1, 2, 3),
                 recipe="grpo", task="reversal")
    runs = load_runs([tmp_path])
    from bench.report import baseline as bl
    res = gt.gate(bl.record_runs(runs), "conf/gate/grpo.yaml", runs, allow_config_mismatch=True,
                  baseline_variant="bf16/bf16")
    acc = [v for v in res if v.variant != "bf16/bf16" and "accuracy" in v.metric][0]
    assert acc.paired and "paired" in acc.method
    d = np.array(acc.values["candidate"]) - (np.array(acc.values["baseline"]) - 0.05)
    assert acc.half_width == pytest.approx(float(sps.t.ppf(0.95, 3) * np.std(d, ddof=1) / 2), rel=1e-9)
    rows = verdict.summarize(group(runs), "bf16/bf16")
    assert "detects accuracy drops ≥" in rows[0]["verdict"] and "paired by seed" in rows[0]["verdict"]


# --- the SYNTHETIC perturbation -----------------------------------------------------------------
def _gen(perturb=None):
    from bench.generation import Generator
    from bench.generation.perturb import Perturbation
    from bench.models.decoder import ModelConfig, Transformer
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=2, d_ff=128, max_seq_len=32)
    torch.manual_seed(0)
    trainer = Transformer(cfg)
    g = Generator(cfg, "fp32", "cpu", kernels=None)
    if perturb is not None:
        Perturbation(perturb).install(g)
    g.refit(trainer)
    return g, trainer


def test_perturb_logits_adds_gaussian_noise_of_std_sigma_from_its_own_stream():
    from bench.generation.perturb import PerturbConfig
    clean, trainer = _gen()
    noisy, _ = _gen(PerturbConfig(sigma=0.7, target="logits", seed=5))
    x = torch.randint(3, 100, (4, 16))
    with torch.no_grad():
        diff = (noisy.model(x).double() - clean.model(x).double())
    eps = torch.randn(diff.shape, generator=torch.Generator().manual_seed(5)).double()
    torch.testing.assert_close(diff, 0.7 * eps, rtol=0, atol=1e-5)


def test_perturb_weights_is_relative_to_each_tensors_rms_and_off_changes_nothing():
    from bench.generation.perturb import PerturbConfig
    noisy, trainer = _gen(PerturbConfig(sigma=0.1, target="weights", seed=2))
    off, _ = _gen(PerturbConfig(sigma=0.0))
    src, got, same = trainer.state_dict(), noisy.model.state_dict(), off.model.state_dict()
    rng = torch.Generator().manual_seed(2)
    for k, v in src.items():
        assert torch.equal(same[k], v)
        if k.endswith(".weight"):
            w = v.double()
            want = w + 0.1 * w.pow(2).mean().sqrt() * torch.randn(v.shape, generator=rng).double()
            torch.testing.assert_close(got[k].double(), want, rtol=0, atol=1e-6)


def test_perturbed_runs_are_labelled_synthetic_and_never_the_reference():
    from bench.report.runs import is_reference, precision_label
    cfg = {"trainer_precision": {"name": "bf16"}, "generator_precision": {"name": "bf16"},
           "is_correction": {"mode": "tis"}, "generator": {"perturb": {"sigma": 0.5, "target": "logits"}}}
    assert precision_label(cfg) == "bf16/bf16 SYNTHETIC-perturb(logits,σ=0.5) is=tis"
    cfg["is_correction"]["mode"] = "none"
    assert not is_reference(cfg)
    cfg["generator"]["perturb"]["sigma"] = 0.0
    assert is_reference(cfg) and precision_label(cfg) == "bf16/bf16"


def test_gate_falls_back_to_welch_when_the_seeds_differ(tmp_path):
    from bench.report import baseline as bl
    from bench.report import gate as gt
    from bench.report.runs import load_runs
    from runfixtures import write_run
    for s in (0, 1, 2):
        write_run(tmp_path, recipe="grpo", task="reversal", seed=s)
        write_run(tmp_path, recipe="grpo", task="reversal", generator="fp8_blockwise", seed=s + 10)
    runs = load_runs([tmp_path])
    res = gt.gate(bl.record_runs(runs), "conf/gate/grpo.yaml", runs, allow_config_mismatch=True,
                  baseline_variant="bf16/bf16")
    acc = [v for v in res if v.variant != "bf16/bf16" and "accuracy" in v.metric][0]
    assert not acc.paired and "Welch" in acc.method
