"""Bad input: one line naming the bad value and the valid choices, exit 2, and nothing on disk.

Every case of the shared lists in tests/badinputs.py runs the real entry point (the recipe's
override check, then its `@hydra.main`) in this process, with sys.argv set as the shell would set
it, stderr captured and SystemExit caught: the same code path as `python -m recipes.X ...` minus
the interpreter start and torch import (~2 s each, which made this file most of the fast loop).
A few cases (SMOKE) also run as real subprocesses, so the `__main__` wiring and the exit status
the shell sees stay tested. Validation fails before the run dir, the process group, the model or
the GRPO warm-up exist; resume cases use a run dir fabricated the way a run writes it
(config.yaml + a checksummed checkpoint), so they need no training either.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import bench.config  # noqa: F401  (registers the schemas before compose_cfg)
from badinputs import BAD_INPUTS, GOOD_CONFIGS
from bench.train import checkpoint as ckpt
from helpers import QUIET, ROOT, compose_cfg, run_cli

FILES = {"{text}": str(ROOT / "README.md"), "{binary}": sys.executable}


# Cases also run as real subprocesses: one of each path to the error (override check, Hydra
# multirun, the validation pass, a GRPO-only check, a file check).
SMOKE = {"key_typo", "unknown_precision_in_sweep", "lr_negative", "group_size_one", "textfile_not_text"}
# The fast loop (`-m "not slow"`) runs one case of each kind of check; every case costs ~1 s of
# Hydra composition (the override check and @hydra.main compose 4 times), so the full list is
# marked slow and CI runs it.
FAST = {"unknown_model", "unknown_engine", "key_typo", "steps_not_an_int", "checkpoint_every_zero", "lr_negative",
        "fp8_shape_not_multiple_of_16", "textfile_without_path", "unknown_is_correction", "group_size_one",
        "textfile_has_no_reward", "shadow_unknown_before_warmup", "is_cap_inf",
        "run_dir_not_ascii", "sweep_cell_with_impossible_shape", "sweep_without_multirun_flag"}


def cases(selected=None) -> list:
    """BAD_INPUTS as pytest params: those in FAST unmarked, the rest slow (or only `selected`)."""
    if selected is not None:  # the subprocess smoke check: one case in the fast loop
        return [pytest.param(c, id=c.id, marks=() if c.id == "lr_negative" else pytest.mark.slow)
                for c in BAD_INPUTS if c.id in selected]
    return [pytest.param(c, id=c.id, marks=() if c.id in FAST else pytest.mark.slow) for c in BAD_INPUTS]


def run_entry(args: list[str]) -> tuple[int, str]:
    """`python -m recipes.<recipe> <overrides>` in this process: (exit status, stderr).

    Runs what the module's `if __name__ == "__main__"` block runs. Hydra keeps process-wide state
    (GlobalHydra, the HydraConfig singleton that `_in_multirun` reads), so it is cleared before
    and after: a stale multirun config would make a later in-process run believe it is a sweep job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    assert args[0] == "-m" and args[1].startswith("recipes."), args
    module, overrides = args[1], args[2:]
    # the override check each module's `__main__` block runs (recipes.attribute takes GRPO keys)
    check = {"recipes.attribute": "grpo"}.get(module, module.split(".")[1])
    mod = importlib.import_module(module)
    err, code, argv = io.StringIO(), 0, sys.argv
    sys.argv = [module.replace(".", "/") + ".py", *overrides]
    # Hydra resolves `config_path="../conf"` against the file only for a `__main__` task
    # function (else as a Python package, which conf/ is not): present it as `python -m` does.
    task = mod.main.__wrapped__
    task.__module__ = "__main__"
    try:
        GlobalHydra.instance().clear()
        with contextlib.chdir(ROOT), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                mod.check_overrides(check)
                mod.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, task.__module__ = argv, module
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return code, err.getvalue()


def one_line_error(args: list[str], subprocess: bool = False) -> str:
    """The run fails with exit 2 and exactly one `fp8bench: error:` line on stderr."""
    if subprocess:
        r = run_cli(args, timeout=300)
        code, stderr = r.returncode, r.stderr
    else:
        code, stderr = run_entry(args)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("fp8bench: error: "), stderr[-3000:]
    return lines[0]


def substitute(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key}={FILES[value]}" if value in FILES else override


def recipe_args(recipe: str, overrides: list[str], run_dir: Path, cache: Path) -> list[str]:
    overrides = [substitute(o) for o in overrides]
    extra = [f"warmup.cache_dir={cache}"] if recipe == "grpo" else []
    # Under -m the run dir is the sweep's (a run_dir override is itself a bad input there).
    where = "hydra.sweep.dir" if "-m" in overrides else "run_dir"
    if not any(o.startswith(f"{where}=") for o in overrides):
        extra.append(f"{where}={run_dir}")
    return ["-m", f"recipes.{recipe}", *overrides, *extra, *QUIET]


@pytest.mark.parametrize("case", cases())
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_dir(case, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    line = one_line_error(recipe_args(case.recipe, case.overrides, run_dir, cache))
    check_case(case, line, run_dir, cache)


@pytest.mark.parametrize("case", cases(SMOKE))
def test_bad_input_from_a_real_process_is_one_line_exit_2(case, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    line = one_line_error(recipe_args(case.recipe, case.overrides, run_dir, cache), subprocess=True)
    check_case(case, line, run_dir, cache)


def check_case(case, line: str, run_dir: Path, cache: Path) -> None:
    for needle in case.needles:
        assert needle in line, line
    assert not run_dir.exists()  # nothing to clean up before the corrected rerun
    assert not cache.exists()    # the GRPO warm-up never trained


def test_a_bad_value_every_sweep_cell_shares_is_not_blamed_on_one_cell(tmp_path):
    line = one_line_error(recipe_args("pretrain", ["-m", "seed=0,1", "optim.lr=-1"], tmp_path / "r", tmp_path / "c"))
    assert "optim.lr=-1" in line and "sweep cell" not in line, line


def test_a_non_ascii_value_in_hydra_quotes_is_accepted_as_the_error_line_suggests(tmp_path):
    """The quoting that the malformed-override line suggests is what Hydra parses: the shell passes
    run_dir="<dir>/démo" and the run dir is that path, accents included."""
    from bench.config import check_overrides, validate

    run_dir = tmp_path / "démo"
    args = [f'run_dir="{run_dir}"', 'task=textfile', f"task.path='{ROOT / 'README.md'}'", *QUIET]
    check_overrides("pretrain", args)
    cfg = compose_cfg("pretrain", args)
    assert cfg.run_dir == str(run_dir)
    validate(cfg, "pretrain")
    assert not run_dir.exists()


def test_an_empty_run_dir_is_refused_not_taken_as_the_current_directory():
    from bench.config import validate
    from bench.core.errors import BadInput

    with pytest.raises(BadInput, match="run_dir='' is empty .*; valid: a directory path"):
        validate(compose_cfg("pretrain", ["run_dir=", *QUIET]), "pretrain")


def test_default_run_dir_is_left_alone_by_a_bad_input():
    """Without run_dir=, the default runs/<recipe>/<run_name> must not be created either."""
    default = ROOT / "runs" / "pretrain" / "bf16_addition_s987654"
    assert not default.exists()
    line = one_line_error(["-m", "recipes.pretrain", "optim.lr=-1", "seed=987654", *QUIET])
    assert "optim.lr=-1" in line
    assert not default.exists()


def test_run_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={tmp_path / 'f' / 'run'}", *QUIET])
    assert f"is under a file ({tmp_path / 'f'})" in line and "valid:" in line


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={tmp_path / 'f'}", *QUIET])
    assert "exists and is not a directory" in line and (tmp_path / "f").read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a file system nobody can write)")
def test_run_dir_on_a_read_only_path():
    line = one_line_error(["-m", "recipes.pretrain", "run_dir=/proc/fp8bench/run", *QUIET])
    assert "run_dir=/proc/fp8bench/run cannot be created" in line and "not writable" in line and "valid:" in line


def test_existing_run_dir_is_never_overwritten(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0}\n')
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={d}", *QUIET])
    assert "already holds a run" in line and "resume=true" in line
    assert sorted(p.name for p in d.iterdir()) == ["metrics.jsonl"]


# --- resume ---------------------------------------------------------------------------------
def fake_run(run_dir: Path, overrides: list[str], step: int = 4) -> Path:
    """A run dir as a finished run leaves it: the resolved config.yaml and a checkpoint."""
    cfg = compose_cfg("pretrain", [*overrides, f"run_dir={run_dir}"])
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt.save(run_dir / "checkpoints", step, {"step": step, "trainer": {}})
    return run_dir


def listing(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("changed,needles", [
    (["precision=bf16"], ("precision: fp8_tensorwise -> bf16",)),
    (["model=125m"], ("model: tiny -> 125m",)),
    (["model.d_ff=512"], ("model.d_ff: 384 -> 512",)),
    (["seed=3", "optim.lr=0.01"], ("seed: 0 -> 3", "optim.lr: 0.003 -> 0.01")),
    (["precision.keep_high_precision.patterns=[]"], ("precision.keep_high_precision.patterns: ['lm_head'] -> []",)),
    (["task.digits=3"], ("task.digits: 2 -> 3",)),
], ids=["precision", "model", "model_dim", "seed_and_lr", "recipe_knob", "task"])
def test_resume_refuses_a_change_to_what_defines_the_run(changed, needles, tmp_path):
    d = fake_run(tmp_path / "run", ["precision=fp8_tensorwise"])
    before = listing(d)
    line = one_line_error(["-m", "recipes.pretrain", "precision=fp8_tensorwise", *changed, f"run_dir={d}",
                           "resume=true", *QUIET])
    assert "resume=true would change what defines the run" in line and "valid:" in line
    for needle in needles:
        assert needle in line, line
    assert listing(d) == before  # config.yaml and summary are not relabelled


def test_resume_without_checkpoint(tmp_path):
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={tmp_path / 'nothing'}", "resume=true", *QUIET])
    assert "has no checkpoint" in line and "valid:" in line
    assert not (tmp_path / "nothing").exists()


def test_resume_with_a_corrupt_checkpoint(tmp_path):
    d = fake_run(tmp_path / "run", [])
    pt = ckpt.latest(d / "checkpoints")
    pt.write_bytes(pt.read_bytes()[:-10])
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={d}", "resume=true", *QUIET])
    assert f"checkpoint {pt} is corrupted or truncated" in line


def test_resume_with_fewer_steps_than_the_checkpoint(tmp_path):
    d = fake_run(tmp_path / "run", [], step=6)
    line = one_line_error(["-m", "recipes.pretrain", f"run_dir={d}", "resume=true", "steps=5", *QUIET])
    assert "steps=5 is below the checkpoint's step 6" in line and "valid: steps >= 6" in line


def test_resume_allows_more_steps_and_other_run_control(tmp_path):
    from bench.config import validate

    d = fake_run(tmp_path / "run", ["precision=fp8_tensorwise"])
    cfg = compose_cfg("pretrain", ["precision=fp8_tensorwise", f"run_dir={d}", "resume=true", "steps=400",
                                   "eval_every=7", "monitor=off", "policy=halt", *QUIET])
    assert validate(cfg, "pretrain").resume_state["step"] == 4


# --- what passes ----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,overrides", GOOD_CONFIGS, ids=lambda v: str(v))
def test_good_configs_pass_validation_and_touch_nothing(recipe, overrides, tmp_path):
    from bench.config import validate

    cfg = compose_cfg(recipe, [*overrides, f"run_dir={tmp_path / 'run'}", *QUIET])
    checked = validate(cfg, recipe)
    assert checked.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert checked.resume_state is None and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_real_run_then_resume_extends_and_refuses_relabelling(tmp_path):
    d = tmp_path / "run"
    base = ["-m", "recipes.pretrain", "precision=fp8_tensorwise", "steps=2", "eval_every=2", "eval_problems=8",
            f"run_dir={d}", *QUIET]
    assert run_cli(base).returncode == 0
    line = one_line_error([*base, "resume=true", "precision=bf16"])
    assert "precision: fp8_tensorwise -> bf16" in line
    r = run_cli([*base, "resume=true", "steps=3", "eval_every=3"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert OmegaConf.load(d / "config.yaml").precision.name == "fp8_tensorwise"


def test_grpo_init_from_a_checkpoint_of_another_model_is_refused_before_the_run_dir(tmp_path):
    from bench.models.decoder import ModelConfig, Transformer

    pt = ckpt.save_file(tmp_path / "other.pt", {"trainer": {"model": Transformer(ModelConfig(d_ff=256)).state_dict()}})
    line = one_line_error(recipe_args("grpo", [f"init_from={pt}"], tmp_path / "run", tmp_path / "cache"))
    assert f"init_from={pt}: layers.0.mlp.gate.weight has shape (256, 128), model expects (384, 128)" in line
    assert not (tmp_path / "run").exists()
