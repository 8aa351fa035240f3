"""`fp8bench compare` puts what a precision saves next to what it costs: the verdict's cost column
and console line (rollout, step, tokens/s, energy per token relative to the baseline, with Δ
accuracy) and the "Where the time goes" phase-split table, computed from metrics.jsonl `time/*`
rows and summary.json's energy; runs without timing show neither."""
import json
import zlib

import numpy as np
import pytest

from bench.cli import main as fp8bench
from bench.perf.timing import PHASES
from runfixtures import write_matrix

# Per variant: seconds of each phase in every logged step (the rest 0), and joules per token.
SPLIT = {"bf16": ({"rollout_prefill": 0.10, "rollout_decode": 0.30, "score": 0.05, "update": 0.50}, 0.02),
         "fp8_blockwise": ({"rollout_prefill": 0.05, "rollout_decode": 0.15, "score": 0.05, "update": 0.50}, 0.015)}


def add_timing(run_dir, phases: dict, j_per_token: float, tokens: int = 1000, device: str = "NVIDIA H100 80GB HBM3") -> None:
    """Rewrite a fixture run's rows with a `time/*` split (+ a little per-run jitter on update) and
    its summary with an NVML energy total, the device and the precision per side, as the loop writes them."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    jitter = 0.001 * (zlib.crc32(run_dir.name.encode()) % 7)
    for r in rows:
        s = {p: phases.get(p, 0.0) for p in PHASES}
        s["update"] += jitter
        step = sum(s.values())
        r.update({f"time/{p}_s": v for p, v in s.items()})
        r.update({f"time/{p}_frac": v / step for p, v in s.items()})
        r.update({"time/synced": 1.0, "train/step_time_s": step, "train/tokens_per_s": tokens / step})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summ = json.loads((run_dir / "summary.json").read_text())
    summ["energy"] = {"source": "nvml", "total_j": 1.0, "j_per_token": j_per_token}
    gen = "fp8_blockwise" if "fp8" in run_dir.name else "bf16"
    summ["device"] = device
    summ["precision"] = {"trainer": {"recipe": "bf16"}, "generator": {"recipe": gen}}
    (run_dir / "summary.json").write_text(json.dumps(summ))


def timed(tmp_path, device: str):
    root = tmp_path / "m"
    runs = write_matrix(root, [dict(recipe="grpo"), dict(recipe="grpo", generator="fp8_blockwise", acc_drop=0.01)],
                        noise=0.005)
    for r in runs:
        add_timing(r, *SPLIT["fp8_blockwise" if "fp8" in r.name else "bf16"], device=device)
    return root, runs


@pytest.fixture
def timed_matrix(tmp_path):
    return timed(tmp_path, "NVIDIA H100 80GB HBM3")


def expected(runs, gen: str) -> dict:
    """float64 from the files: per run the mean over logged steps after the first, then over seeds."""
    per = []
    for r in runs:
        if ("fp8" in r.name) != (gen == "fp8_blockwise"):
            continue
        rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()][1:]
        step = np.mean([sum(x[f"time/{p}_s"] for p in PHASES) for x in rows])
        roll = np.mean([x["time/rollout_prefill_s"] + x["time/rollout_decode_s"] for x in rows])
        tps = np.mean([x["train/tokens_per_s"] for x in rows])
        per.append((step, roll, tps))
    return dict(zip(("step", "rollout", "tps"), np.mean(per, axis=0)))


def test_verdict_shows_the_saving_beside_the_accuracy_change(timed_matrix, tmp_path, capsys):
    root, runs = timed_matrix
    out = tmp_path / "out"
    assert fp8bench(["compare", str(root), "-o", str(out)]) == 0
    b, f = expected(runs, "bf16"), expected(runs, "fp8_blockwise")
    want = (f"rollout {(f['rollout'] / b['rollout'] - 1) * 100:+.1f}%, step {(f['step'] / b['step'] - 1) * 100:+.1f}%, "
            f"tokens/s {(f['tps'] / b['tps'] - 1) * 100:+.1f}%, energy/token {(0.015 / 0.02 - 1) * 100:+.1f}%, accuracy ")
    assert want.startswith("rollout -50.0%")
    md = (out / "report.md").read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| bf16/fp8_blockwise |")][0].split(" | ")
    assert row[6].startswith(want), row
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  bf16/fp8_blockwise:")][0]
    assert "; " + want in line
    split = md.split("## Where the time goes")[1]
    assert "| bf16/bf16 |" in split and "| bf16/fp8_blockwise |" in split
    assert f"{0.30 / b['step']:.1%}" in split.split("| bf16/bf16 |")[1].splitlines()[0]


def test_runs_without_timing_show_no_cost_and_no_split(tmp_path, capsys):
    root = tmp_path / "p"
    write_matrix(root, [dict(recipe="grpo"), dict(recipe="grpo", generator="fp8_blockwise")], noise=0.005)
    out = tmp_path / "o"
    assert fp8bench(["compare", str(root), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Where the time goes" not in md
    row = [ln for ln in md.splitlines() if ln.startswith("| bf16/fp8_blockwise |")][0].split(" | ")
    assert row[6] == "—"


@pytest.mark.parametrize("device", ["cpu (AMD EPYC, 1 threads, AVX2, no native bf16 (emulated))", "NVIDIA A100-SXM4-80GB"])
def test_where_fp8_is_emulated_the_cost_is_labelled_emulation_not_a_saving(tmp_path, capsys, device):
    root, _ = timed(tmp_path, device)
    out = tmp_path / "out"
    assert fp8bench(["compare", str(root), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| bf16/fp8_blockwise |")][0].split(" | ")
    assert row[6].startswith("emulation on this host, not a precision saving: rollout -50.0%"), row
    assert "not what the precision saves" in md.split("| variant |")[0]
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  bf16/fp8_blockwise:")][0]
    assert "emulation on this host, not a precision saving: rollout -50.0%" in line


def test_on_fp8_hardware_the_saving_carries_no_emulation_caveat(timed_matrix, tmp_path):
    root, _ = timed_matrix
    assert fp8bench(["compare", str(root), "-o", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "emulation" not in md.split("## Where the time goes")[0]


@pytest.mark.parametrize("device, recipe, native", [
    ("NVIDIA H100 80GB HBM3", "fp8_blockwise", True), ("NVIDIA L40S", "fp8_tensorwise", True),
    ("NVIDIA A100-SXM4-80GB", "fp8_tensorwise", False), ("NVIDIA H200", "mxfp8", False),
    ("NVIDIA B200", "mxfp8", True), ("NVIDIA B200", "nvfp4", False), ("NVIDIA A100-SXM4-80GB", "bf16", True),
    ("cpu (x, 2 threads, AVX512, native bf16: avx512_bf16)", "bf16", False), ("Some Future GPU", "fp8_rowwise", False),
])
def test_a_precision_counts_as_executed_only_on_a_device_with_its_units(device, recipe, native):
    from bench.perf.cost import executed_natively

    summary = {"device": device, "precision": {"trainer": {"recipe": "bf16"}, "generator": {"recipe": recipe}}}
    assert executed_natively(summary) is native
    assert executed_natively({"device": device}) is False  # nothing recorded about what ran
