"""The gate's non-inferiority statistics on synthetic runs of known means and spreads.

Each run dir holds exactly one final accuracy, so every seed's value, every mean and every
spread is known in advance. The reference below is the textbook definition in float64 (Welch's
standard error, Satterthwaite's degrees of freedom, t quantiles from scipy), written here
without importing bench.report.stats."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from bench.core.errors import BadInput
from bench.report import gate as gt
from bench.report import gate_output as go
from bench.report import runs as rr
from runfixtures import cli

ACC = "eval/addition/accuracy"
RULES = {"rules": [{"metric": ACC, "stat": "final", "bound": "max_drop", "value": 0.05}]}


def write_exact(root, precision: str, accs, steps: int = 60, knobs: dict | None = None, **cfg_extra):
    """One run dir per value in `accs` (seeds 0, 1, ...), each with that final accuracy; `knobs`
    go into the precision group, `cfg_extra` at the top of config.yaml."""
    for seed, acc in enumerate(accs):
        path = root / f"{precision}_s{seed}"
        path.mkdir(parents=True)
        cfg = {"recipe": "pretrain", "seed": seed, "steps": steps, "run_name": path.name, "run_dir": str(path),
               "model": {"name": "tiny", "d_model": 128}, "task": {"name": "addition"},
               "precision": {"name": precision, **(knobs or {})}, **cfg_extra}
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))
        (path / "metrics.jsonl").write_text(json.dumps({"step": steps, "train/loss": 1.0}) + "\n")
        (path / "evals.jsonl").write_text(json.dumps({"step": steps, ACC: float(acc)}) + "\n")
        (path / "summary.json").write_text(json.dumps({"status": "completed", "steps_completed": steps}))
    return root


def pair(mean: float, half: float) -> list[float]:
    """Two seeds with the given mean and sample std half·√2."""
    return [mean - half, mean + half]


def spread(mean: float, sd: float, n: int) -> np.ndarray:
    """n values with exactly this mean and sample standard deviation (ddof 1)."""
    z = np.linspace(-1, 1, n)
    return mean + sd * z / z.std(ddof=1)


def reference(c, b, tol, alpha=0.05):
    """Non-inferiority by its definition: margin = mean(c) − mean(b − tol); Welch se and df."""
    c, t = np.asarray(c, float), np.asarray(b, float) - tol
    a, bb = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    se = math.sqrt(a + bb)
    df = (a + bb) ** 2 / (a * a / (len(c) - 1) + bb * bb / (len(t) - 1))
    margin = c.mean() - t.mean()
    h = sps.t.ppf(1 - alpha, df) * se
    outcome = "pass" if margin - h > 0 else "regression" if margin + h < 0 else "inconclusive"
    return outcome, margin, h, se, df


def judge(tmp_path, base, cand, test="noninferiority", tag=""):
    b = write_exact(tmp_path / f"b{tag}", "bf16", base)
    c = write_exact(tmp_path / f"c{tag}", "bf16", cand)
    # Hand-built sides with seeds 0..n-1 each: the Welch derivation under test, not the pairing
    # (test_disagreement_cost.py checks the paired path against scipy).
    (v,) = gt.gate([b], gt.load_rules(RULES), [c], test=test, pair=False)
    return v


def _half_for_p(drop: float, p: float) -> float:
    """Half-spread of two-seed pairs for which the old one-sided Welch test gives p at this drop:
    margin = drop + 0.05, se = √2·half, df = 2, p = T_2(margin / se)."""
    return (drop + 0.05) / (math.sqrt(2) * sps.t.ppf(p, 2))


@pytest.mark.parametrize("drop,p", [(-0.095, 0.06), (-0.11, 0.10)])
def test_issue_cases_two_seeds_twice_the_tolerance_are_not_a_pass(tmp_path, drop, p):
    half = _half_for_p(drop, p)
    base, cand = pair(0.80, half), pair(0.80 + drop, half)
    old = judge(tmp_path, base, cand, test="welch")
    assert old.p_value == pytest.approx(p, rel=1e-9) and old.outcome == "pass"  # what the issue saw
    new = judge(tmp_path, base, cand, tag="n")
    assert new.outcome == "inconclusive" and new.delta == pytest.approx(drop)
    assert new.seeds_needed and new.detail == f"need {new.seeds_needed} seeds per side"
    assert new.min_detectable > 2 * 0.05  # two seeds cannot resolve a drop of twice the tolerance


@pytest.mark.parametrize("drop,sd,n,want", [(-0.01, 0.005, 5, "pass"), (-0.20, 0.01, 3, "regression"),
                                            (-0.05, 0.02, 3, "inconclusive"), (0.0, 0.03, 2, "inconclusive"),
                                            (-0.03, 0.004, 4, "pass"), (-0.08, 0.004, 4, "regression")])
def test_outcome_matches_the_float64_definition(tmp_path, drop, sd, n, want):
    base, cand = spread(0.8, sd, n), spread(0.8 + drop, sd * 1.3, n)
    outcome, margin, h, se, df = reference(cand, base, 0.05)
    assert outcome == want  # the case is what its name says
    v = judge(tmp_path, base, cand)
    assert v.outcome == outcome
    assert v.delta == pytest.approx(drop, abs=1e-12) and v.half_width == pytest.approx(h, rel=1e-10)
    power = sps.t.ppf(0.8, df)
    assert v.min_detectable == pytest.approx(0.05 + (sps.t.ppf(0.95, df) + power) * se, rel=1e-10)


def test_seeds_needed_is_enough_and_one_fewer_is_not(tmp_path):
    base, cand = spread(0.8, 0.03, 3), spread(0.76, 0.03, 3)  # margin +0.01: close to the limit
    v = judge(tmp_path, base, cand)
    n = v.seeds_needed
    assert v.outcome == "inconclusive" and n > 3
    # with n seeds per side of the same means and spreads the interval clears the limit
    assert reference(spread(0.76, 0.03, n), spread(0.8, 0.03, n), 0.05)[0] == "pass"
    assert reference(spread(0.76, 0.03, n - 1), spread(0.8, 0.03, n - 1), 0.05)[0] == "inconclusive"


def test_exit_codes_and_outputs_per_outcome(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    cases = {"pass": (spread(0.8, 0.005, 5), spread(0.79, 0.005, 5), 0),
             "regression": (spread(0.8, 0.01, 3), spread(0.6, 0.01, 3), 1),
             "inconclusive": (pair(0.8, 0.03), pair(0.7, 0.03), 3)}
    for name, (base, cand, code) in cases.items():
        b = write_exact(tmp_path / f"b_{name}", "bf16", base)
        c = write_exact(tmp_path / f"c_{name}", "bf16", cand)
        md, junit = tmp_path / f"{name}.md", tmp_path / f"{name}.xml"
        assert cli("gate", "--unpaired", "--baseline", b, "--rules", rules, "--markdown", md, "--junit", junit,
                   c) == code
        text = md.read_text()
        assert {"pass": "PASS", "regression": "FAIL", "inconclusive": "INCONCLUSIVE"}[name] in text.splitlines()[0]
        assert "min detectable" in text
        case = ET.parse(junit).getroot().find("testsuite/testcase")
        assert (case.find("failure") is not None) == (name == "regression")
        assert (case.find("skipped") is not None) == (name == "inconclusive")
        if name == "inconclusive":
            assert "need" in case.find("skipped").get("message")


def test_rule_can_name_the_welch_test(tmp_path):
    half = _half_for_p(-0.095, 0.06)
    b = write_exact(tmp_path / "b", "bf16", pair(0.8, half))
    c = write_exact(tmp_path / "c", "bf16", pair(0.705, half))
    rules = {"rules": [{**RULES["rules"][0], "test": "welch"}]}
    (v,) = gt.gate([b], gt.load_rules(rules), [c], pair=False)
    assert v.outcome == "pass" and "Welch t one-sided" in v.method


def test_bad_test_name_is_one_line(tmp_path, capsys):
    b = write_exact(tmp_path / "b", "bf16", pair(0.8, 0.01))
    assert cli("gate", "--test", "bayes", "--baseline", b, b) == 2  # refused before the rules are read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bayes" in err[0] and "noninferiority" in err[0]


# --- config mismatch ----------------------------------------------------------------------------
def test_config_mismatch_is_refused_in_one_line_unless_allowed(tmp_path, capsys):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4), steps=60)
    c = write_exact(tmp_path / "c", "bf16", spread(0.8, 0.005, 4), steps=10)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    assert cli("gate", "--rules", rules, "--baseline", b, b) == 0  # same config: gated
    assert cli("gate", "--rules", rules, "--baseline", b, c) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps: 60 vs 10" in err[0] and "--allow-config-mismatch" in err[0]
    md = tmp_path / "g.md"
    assert cli("gate", "--rules", rules, "--allow-config-mismatch", "--markdown", md, "--baseline", b, c) == 0
    assert "config mismatch accepted" in md.read_text() and "steps: 60 vs 10" in md.read_text()


def test_bookkeeping_keys_do_not_count_as_a_mismatch(tmp_path):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4), threads=1, logger={"x": 1})
    c = write_exact(tmp_path / "c", "bf16", spread(0.8, 0.005, 4), threads=2, checkpoint_every=7)
    verdicts = gt.gate([b], gt.load_rules(RULES), [c])
    assert not verdicts.notes and go.exit_code(verdicts) == 0


def test_precision_knobs_count_only_against_the_same_precision(tmp_path):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4))
    write_exact(tmp_path / "b", "fp8_tensorwise", spread(0.8, 0.005, 4), knobs={"margin": 0})
    c = write_exact(tmp_path / "c", "fp8_tensorwise", spread(0.8, 0.005, 4), knobs={"margin": 1})
    with pytest.raises(BadInput, match="precision.margin: 0 vs 1"):
        gt.gate([b], gt.load_rules(RULES), [c])  # judged against the recorded fp8 variant: knobs must match
    # against the bf16 reference the precision differs by design
    assert not gt.gate([b], gt.load_rules(RULES), [c], baseline_variant="bf16").notes


def test_a_key_on_one_side_only_is_a_note_not_a_refusal(tmp_path):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4))
    c = write_exact(tmp_path / "c", "bf16", spread(0.8, 0.005, 4), new_knob=3)  # added after recording
    verdicts = gt.gate([b], gt.load_rules(RULES), [c])
    assert verdicts.notes == ["'bf16' vs baseline 'bf16': keys set on one side only (not compared): "
                              "new_knob (only in the candidate)"]
    assert go.exit_code(verdicts) == 0


def test_old_format_baseline_still_loads_and_gates(tmp_path):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4))
    path = tmp_path / "base.json"
    assert cli("baseline", "record", b, "-o", path) == 0
    data = json.loads(path.read_text())
    assert data["format"] == "fp8bench-baseline/2" and data["variants"]["bf16"]["defining"]["steps"] == "60"
    data["format"] = "fp8bench-baseline/1"
    for v in data["variants"].values():
        del v["defining"]
    path.write_text(json.dumps(data))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    assert cli("gate", "--rules", rules, "--baseline", path, b) == 0
    c = write_exact(tmp_path / "c", "bf16", spread(0.8, 0.005, 4), steps=10)
    assert cli("gate", "--rules", rules, "--baseline", path, c) == 2  # the variant's config still identifies the run


def test_loaded_runs_group_like_the_cli(tmp_path):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 3))
    assert list(rr.group(rr.load_runs([b]))) == ["bf16"]


def test_a_config_mismatch_line_names_every_differing_key(tmp_path, capsys):
    b = write_exact(tmp_path / "b", "bf16", spread(0.8, 0.005, 4), steps=60, batch_size=32, optim={"lr": 0.003})
    c = write_exact(tmp_path / "c", "bf16", spread(0.8, 0.005, 4), steps=10, batch_size=16, optim={"lr": 0.01})
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    assert cli("gate", "--rules", rules, "--baseline", b, c) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more)" not in err[0], err
    assert "batch_size: 32 vs 16; optim.lr: 0.003 vs 0.01; steps: 60 vs 10; rerun" in err[0]


def auto_device_runs(root, baseline: dict, device: str) -> list:
    """Candidate run dirs configured exactly like the committed baseline's bf16 variant except
    `device: auto`, whose summary.json records `device` (what auto resolved to)."""
    v = baseline["variants"]["bf16"]
    for seed, acc in enumerate([0.5, 0.52]):
        path = root / f"bf16_s{seed}"
        path.mkdir(parents=True)
        cfg = {**v["config"], "device": "auto", "seed": seed, "run_name": path.name, "run_dir": str(path)}
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))
        (path / "metrics.jsonl").write_text(json.dumps({"step": 60, "train/loss": 1.0}) + "\n")
        (path / "evals.jsonl").write_text(json.dumps({"step": 60, ACC: acc}) + "\n")
        (path / "summary.json").write_text(json.dumps({"status": "completed", "steps_completed": 60,
                                                       "device": device}))
    return [root]


def test_device_auto_that_ran_on_cpu_gates_against_the_committed_cpu_baseline(tmp_path):
    path = Path(__file__).resolve().parents[1] / "baselines" / "pretrain-cpu.json"
    base = json.loads(path.read_text())
    assert base["variants"]["bf16"]["config"]["device"] == "cpu"
    cpu = auto_device_runs(tmp_path / "cpu", base, "cpu (fixture, 2 threads, AVX512)")
    verdicts = gt.gate(path, gt.load_rules(RULES), cpu)  # past the config check: judged
    assert not [n for n in verdicts.notes if "mismatch" in n] and verdicts
    gpu = auto_device_runs(tmp_path / "gpu", base, "NVIDIA H100 80GB HBM3")  # auto that found a GPU
    with pytest.raises(BadInput, match='device: "cpu" vs "cuda"'):
        gt.gate(path, gt.load_rules(RULES), gpu)
