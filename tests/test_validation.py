"""Bad input: one clear line naming the bad value and the valid choices, exit 2, before compute."""
import pytest

from helpers import run_cli

CASES = [
    ("unknown_model", "pretrain", ["model=huge"], "model='huge'"),
    ("unknown_task", "pretrain", ["task=sudoku"], "task='sudoku'"),
    ("unknown_precision", "pretrain", ["precision=fp9"], "precision='fp9'"),
    ("unknown_precision_in_sweep", "pretrain", ["-m", "precision=bf16,fp9"], "precision='fp9'"),
    ("non_positive_model_size", "pretrain", ["model.d_model=0"], "model.d_model=0"),
    ("non_positive_steps", "pretrain", ["steps=0"], "steps=0"),
    ("unknown_engine", "pretrain", ["precision=fp8_tensorwise", "precision.engine=cutlass"], "precision.engine='cutlass'"),
    ("te_without_cuda", "pretrain", ["precision=fp8_delayed", "precision.engine=te"], "cannot run fp8_delayed"),
    ("torchao_without_delayed", "pretrain", ["precision=fp8_delayed", "precision.engine=torchao"], "no delayed scaling"),
    ("impossible_shape_for_mx", "pretrain", ["precision=mxfp8", "model.d_ff=400"], "cannot run mxfp8"),
    ("unknown_is_correction", "grpo", ["is_correction=magic"], "is_correction='magic'"),
    ("unknown_is_mode_knob", "grpo", ["is_correction.mode=magic"], "magic"),
    ("unknown_policy_action", "pretrain", ["policy.action=explode"], "policy.action='explode'"),
]


@pytest.mark.parametrize("name,recipe,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(name, recipe, args, needle, tmp_path):
    r = run_cli(["-m", f"recipes.{recipe}", *args, f"run_dir={tmp_path / 'run'}", "logger=disabled"], timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no compute started


def test_resume_without_checkpoint_exits_2(tmp_path):
    r = run_cli(["-m", "recipes.pretrain", f"run_dir={tmp_path / 'nothing'}", "resume=true", "logger=disabled"])
    assert r.returncode == 2 and "has no checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_existing_run_dir_is_never_overwritten(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0}\n')
    r = run_cli(["-m", "recipes.pretrain", f"run_dir={d}", "logger=disabled"])
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert (d / "metrics.jsonl").read_text() == '{"step": 0}\n'
