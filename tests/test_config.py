"""Every conf file composes, for both recipes, through Hydra's compose API."""
import pytest

from helpers import CONF, compose_cfg

GROUPS = ["model", "task", "precision", "optim", "logger", "monitor", "policy", "stress"]
GRPO_GROUPS = ["trainer_precision", "generator_precision", "is_correction"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [("pretrain", g, o) for g in GROUPS for o in options(g)] + \
        [("grpo", g, o) for g in GRPO_GROUPS for o in options(g)] + \
        [("grpo", "+matrix", o) for o in options("matrix")]


@pytest.mark.parametrize("recipe,group,option", CASES, ids=lambda v: str(v))
def test_every_config_option_composes(recipe, group, option):
    extra = ["task.path=/dev/null"] if option == "textfile" else []
    cfg = compose_cfg(recipe, [f"{group}={option}"] + extra)
    assert cfg.recipe == recipe
    assert cfg.run_dir.startswith(f"runs/{recipe}/")


def test_grpo_precision_sides_resolve_to_full_recipes():
    cfg = compose_cfg("grpo", ["trainer_precision=fp8_delayed", "generator_precision=mxfp8", "trainer_precision.margin=1"])
    assert cfg.trainer_precision.scaling == "delayed" and cfg.trainer_precision.margin == 1
    assert cfg.generator_precision.scaling == "mx" and cfg.generator_precision.mx_block == 32


def test_matrix_cells_set_both_sides_and_is_mode():
    cfg = compose_cfg("grpo", ["+matrix=bf16-fp8-tis"])
    assert (cfg.trainer_precision.name, cfg.generator_precision.name, cfg.is_correction.mode) == ("bf16", "fp8_blockwise", "tis")


@pytest.mark.parametrize("name", options("precision"))
def test_fp8_precision_files_are_valid_recipes(name):
    from bench.precision.mixed import is_fp8
    from bench.precision.recipes import get_recipe

    cfg = compose_cfg("pretrain", [f"precision={name}"])
    if is_fp8(name):
        assert get_recipe(cfg.precision).name == name


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm", "slurm_local"])
def test_launcher_configs_compose(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="grpo", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "_target_" in cfg.hydra.launcher
