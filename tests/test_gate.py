"""fp8bench gate and baseline record: verdicts, statistics, outputs, exit codes."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import yaml

from bench.report import baseline as bl
from bench.report import gate as gt
from bench.report import runs as rr
from runfixtures import cli, write_matrix, write_run

ACC = "eval/addition/accuracy"


def rules_file(tmp_path, rules, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def acc_rule(tol):
    return [{"metric": ACC, "stat": "final", "bound": "max_drop", "value": tol}]


@pytest.fixture
def base(tmp_path):
    return write_matrix(tmp_path / "base", [dict(precision="bf16"), dict(precision="fp8_tensorwise")])


def test_run_against_itself_passes_when_seeds_resolve_the_tolerance(base, tmp_path):
    # Seed noise 0.02 with 3 seeds cannot show a 5 % tolerance is met on every rule unpaired:
    # inconclusive (exit 3), never a regression; the older Welch rule reads the same data as a pass.
    # Paired by seed (the default) a run against itself differs by exactly 0: pass.
    assert cli("gate", "--unpaired", "--baseline", tmp_path / "base", tmp_path / "base") == 3
    assert cli("gate", "--baseline", tmp_path / "base", tmp_path / "base") == 0
    assert cli("gate", "--test", "welch", "--baseline", tmp_path / "base", tmp_path / "base") == 0
    quiet = write_matrix(tmp_path / "quiet", [dict(precision="bf16"), dict(precision="fp8_tensorwise")], noise=0.002)
    assert cli("gate", "--baseline", quiet[0].parent, quiet[0].parent) == 0


def test_eval_accuracy_regression_fails(base, tmp_path):
    write_matrix(tmp_path / "cand", [dict(precision="bf16"), dict(precision="fp8_tensorwise", acc_drop=0.15)])
    junit = tmp_path / "out" / "gate.xml"
    assert cli("gate", "--baseline", tmp_path / "base", "--junit", junit, tmp_path / "cand") == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    n_rules = len(gt.load_rules(gt.default_rules_path("pretrain")))
    cases = suite.findall("testcase")
    assert len(cases) == n_rules * 2  # one testcase per rule x variant
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("gate.fp8_tensorwise", "eval/*/accuracy final max_drop 0.05")]
    assert suite.get("failures") == "1" and suite.get("tests") == str(len(cases))


def test_overflow_events_fail(base, tmp_path, monkeypatch):
    write_matrix(tmp_path / "cand", [dict(precision="bf16"), dict(precision="fp8_tensorwise", overflow_events=8)])
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    md = tmp_path / "gate.md"
    assert cli("gate", "--baseline", tmp_path / "base", "--markdown", md, tmp_path / "cand") == 1
    text = md.read_text()
    assert "FAIL (1 regression" in text and "non-inferiority" in text and "α = 0.05" in text
    assert "| REGRESSION | fp8_tensorwise | overflow events abs_max 5 |" in text
    assert summary.read_text() == "earlier step\n" + text + "\n"  # appended, not overwritten


def test_diverged_run_fails_status_and_metrics(base, tmp_path):
    write_matrix(tmp_path / "cand", [dict(precision="bf16")])
    write_run(tmp_path / "cand", precision="fp8_tensorwise", diverge_at=50, status="diverged")
    verdicts = gt.gate([tmp_path / "base"], None, [tmp_path / "cand"])
    bad = {(v.variant, v.metric) for v in verdicts if v.regression}
    assert bad == {("fp8_tensorwise", "status"), ("fp8_tensorwise", "train/loss")}


def _alarms(tmp_path, tol, shift=0.0, draws=20, seeds=(0, 1, 2)):
    """How many of `draws` independent (baseline, candidate) seed sets raise an alarm."""
    rules = gt.load_rules({"rules": acc_rule(tol)})
    out = []
    for d in range(draws):
        b = [rr.load_run(write_run(tmp_path / f"b{tol}_{shift}_{d}", seed=s, noise_seed=100 * d + s)) for s in seeds]
        c = [rr.load_run(write_run(tmp_path / f"c{tol}_{shift}_{d}", seed=s, noise_seed=100 * d + 50 + s,
                                   acc_drop=shift)) for s in seeds]
        out += gt.gate(b, rules, c)
    return sum(v.regression for v in out), out


def test_same_distribution_rarely_alarms(tmp_path):
    # Tolerance 0 is the hardest case: the Welch test alone bounds false alarms at alpha = 5 %.
    n, verdicts = _alarms(tmp_path, tol=0.0)
    assert all("Welch" in v.method or "paired" in v.method for v in verdicts)  # independent draws: both valid
    assert n <= 3  # P(>= 4 of 20 | 5 %) < 2 %; with these fixed seeds the count is deterministic
    assert _alarms(tmp_path, tol=0.05)[0] == 0  # with the default tolerance: no false alarm


def test_real_shift_detected(tmp_path):
    n, verdicts = _alarms(tmp_path, tol=0.05, shift=0.15, draws=5)
    assert n == 5 and all(v.p_value < 0.05 for v in verdicts)
    # a shift inside the tolerance is not a regression, even if it is real
    assert _alarms(tmp_path, tol=0.05, shift=0.02, draws=5)[0] == 0


def test_one_seed_is_inconclusive_and_welch_uses_plain_tolerance(tmp_path):
    b = [rr.load_run(write_run(tmp_path / "b", seed=0))]
    rules = gt.load_rules({"rules": acc_rule(0.05)})
    for drop, expect in ((0.1, True), (0.01, False)):
        c = [rr.load_run(write_run(tmp_path / f"c{drop}", seed=0, acc_drop=drop))]
        (v,) = gt.gate(b, rules, c, test="welch")
        assert v.method == "tolerance (1 seed)" and v.p_value is None and v.regression is expect
        (v,) = gt.gate(b, rules, c)
        assert v.outcome == "inconclusive" and v.detail == "need ≥ 2 seeds per side"


def test_rel_and_abs_bounds(tmp_path):
    root = tmp_path / "g"
    write_matrix(root / "base", [dict(recipe="grpo")])
    write_matrix(root / "cand", [dict(recipe="grpo"), dict(recipe="grpo", generator="fp8_blockwise", mismatch_shift=0.1)])
    verdicts = gt.gate([root / "base"], None, [root / "cand"])  # default conf/gate/grpo.yaml
    bad = {(v.variant, v.metric) for v in verdicts if v.regression}
    assert bad == {("bf16/fp8_blockwise", "mismatch/token_mult_prob_error")}
    # fp8 generator is compared with the bf16/bf16 baseline (no fp8 variant was recorded)
    assert {v.baseline_variant for v in verdicts if v.baseline_variant} == {"bf16/bf16"}
    loss = gt.load_rules({"rules": [{"metric": "train/loss", "stat": "mean_last_k", "k": 3,
                                     "bound": "rel_increase", "value": 0.05}]})
    write_matrix(root / "worse", [dict(recipe="grpo", loss_shift=0.2)])
    (v,) = gt.gate([root / "base"], loss, [root / "worse"])
    assert v.regression and v.limit == pytest.approx(v.base_mean * 1.05)


def test_baseline_file_equals_baseline_dirs(base, tmp_path):
    write_matrix(tmp_path / "cand", [dict(precision="bf16", acc_drop=0.03),
                                     dict(precision="fp8_tensorwise", acc_drop=0.12, overflow_events=2)])
    rules = gt.default_rules_path("pretrain")
    path = tmp_path / "baselines" / "pretrain.json"
    assert cli("baseline", "record", tmp_path / "base", "-o", path, "--rules", rules) == 0
    assert not [p for p in path.parent.iterdir() if p.name != "pretrain.json"]  # temp file renamed
    data = json.loads(path.read_text())
    assert data["format"] == bl.FORMAT and data["device"] == "cpu (fixture)" and data["versions"]
    assert data["config"]["recipe"] == "pretrain"
    bf16 = data["variants"]["bf16"]
    assert [r["seed"] for r in bf16["runs"]] == [0, 1, 2]
    assert len(bf16["evals"][ACC]["final"]) == 3 and "mean_last_5" in bf16["metrics"]["train/loss"]

    def key(vs):
        return [(v.variant, v.metric, v.baseline_variant, v.regression, v.base_mean, v.cand_mean, v.p_value)
                for v in vs]

    from_file = gt.gate(path, rules, [tmp_path / "cand"])
    from_dirs = gt.gate([tmp_path / "base"], rules, [tmp_path / "cand"])
    assert key(from_file) == key(from_dirs)
    assert any(v.regression for v in from_file)
    code_file = cli("gate", "--baseline", path, tmp_path / "cand")
    code_dirs = cli("gate", "--baseline", tmp_path / "base", tmp_path / "cand")
    assert code_file == code_dirs == 1


def test_same_variant_baseline_preferred(tmp_path):
    write_matrix(tmp_path / "base", [dict(precision="bf16"), dict(precision="fp8_tensorwise", acc_drop=0.2)])
    write_matrix(tmp_path / "cand", [dict(precision="fp8_tensorwise", acc_drop=0.2)])
    verdicts = gt.gate([tmp_path / "base"], gt.load_rules({"rules": acc_rule(0.05)}), [tmp_path / "cand"])
    assert [(v.baseline_variant, v.regression) for v in verdicts] == [("fp8_tensorwise", False)]
    forced = gt.gate([tmp_path / "base"], gt.load_rules({"rules": acc_rule(0.05)}), [tmp_path / "cand"],
                     baseline_variant="bf16")
    assert [(v.baseline_variant, v.regression) for v in forced] == [("bf16", True)]


def test_event_count_with_where_glob_and_relative_bound(base, tmp_path):
    write_matrix(tmp_path / "cand", [dict(precision="fp8_tensorwise", overflow_events=4)])
    rules = gt.load_rules({"rules": [
        {"stat": "event_count", "kind": "overflow", "metric": "layers.1.*", "bound": "max_increase", "value": 2},
        {"stat": "event_count", "kind": "overflow", "metric": "lm_head*", "bound": "max_increase", "value": 2}]})
    v1, v2 = gt.gate([tmp_path / "base"], rules, [tmp_path / "cand"])
    assert v1.regression and v1.cand_mean == 4 and v1.method == "non-inferiority: no spread (exact)"
    assert not v2.regression and v2.cand_mean == 0
