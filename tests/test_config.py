"""Every conf file composes against the schemas, each default lives in one place, and CLI
overrides are checked before Hydra: unknown choices, key typos, wrong types."""
import pytest
from omegaconf import OmegaConf

import bench.config  # noqa: F401  (registers the schemas before compose_cfg)
from bench.config import check_overrides
from bench.config import schema
from bench.core.errors import BadInput
from helpers import CONF, compose_cfg

GROUPS = ["model", "task", "precision", "optim", "logger", "monitor", "policy", "stress", "timing"]
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
        from bench.precision.recipes import RECIPES

        assert get_recipe(cfg.precision) == RECIPES[name]  # the file and the named recipe are one recipe


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm", "slurm_local"])
def test_launcher_configs_compose(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="grpo", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "_target_" in cfg.hydra.launcher


# --- one place per default ------------------------------------------------------------------
SINGLE_SCHEMA_GROUPS = {"model": schema.ModelConfig, "optim": schema.OptimConfig, "logger": schema.LoggerConfig,
                        "monitor": schema.MonitorConfig, "policy": schema.PolicyConfig, "stress": schema.StressConfig,
                        "is_correction": schema.ISCorrection, "timing": schema.TimingConfig}


def leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("group,option", [(g, o) for g in SINGLE_SCHEMA_GROUPS for o in options(g)],
                         ids=lambda v: str(v))
def test_no_group_file_repeats_a_schema_default(group, option):
    """A value equal to the schema's default in a YAML file is a second copy of that default:
    the two drift apart (logger.console_every read 10 in code and 25 in YAML)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(SINGLE_SCHEMA_GROUPS[group]))
    flat = dict(leaves(defaults))
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
    repeated = [k for k, v in leaves(raw) if k != "name" and k in flat and flat[k] == v]
    assert not repeated, f"{group}/{option}.yaml repeats schema defaults: {repeated}"


@pytest.mark.parametrize("option", options("precision") + options("task"), ids=str)
def test_no_precision_or_task_file_repeats_its_kind_schema_default(option):
    group = "precision" if option in options("precision") else "task"
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
    (kind,) = [d.split("/")[-1].split("@")[0] for d in raw.pop("defaults") if d.startswith("/schema/")]
    node = (schema.PRECISION_SCHEMAS if group == "precision" else schema.TASK_SCHEMAS)[kind]
    flat = dict(leaves(OmegaConf.to_container(OmegaConf.structured(node))))
    repeated = [k for k, v in leaves(raw) if k not in ("name", "scaling") and k in flat and flat[k] == v]
    assert not repeated, f"{group}/{option}.yaml repeats schema defaults: {repeated}"


def test_defaults_that_used_to_disagree_now_have_one_value():
    cfg = compose_cfg("pretrain", ["stress=outlier"])
    assert cfg.logger.console_every == schema.LoggerConfig.console_every == 25
    assert (cfg.stress.module, cfg.stress.from_step, cfg.stress.growth) == ("layers.1.mlp.down", 60, 1.5)
    assert OmegaConf.to_object(cfg.model) == schema.ModelConfig()  # model=tiny is the schema's default model


def test_composed_config_has_every_schema_key_typed():
    cfg = compose_cfg("grpo", ["trainer_precision=fp8_delayed"])
    assert OmegaConf.get_type(cfg.trainer_precision) is schema.DelayedPrecision
    assert OmegaConf.get_type(cfg.grpo).__name__ == "GRPOConfig" and cfg.grpo.group_size == 8
    assert cfg.trainer_precision.keep_high_precision.patterns == ["lm_head"]
    with pytest.raises(Exception):
        cfg.grpo.group_size = "eight"  # typed nodes refuse values of the wrong type


# --- CLI overrides --------------------------------------------------------------------------
@pytest.mark.parametrize("args,needles", [
    (["stepz=5"], ["unknown config key 'stepz'", "did you mean steps?"]),
    (["optim.lrr=1e-3"], ["'optim.lrr'", "did you mean optim.lr?", "valid keys under optim: lr"]),
    (["precision=fp8_rowwise", "precision.mx_block=16"], ["'precision.mx_block'", "valid keys under precision"]),
    (["stop_after=soon"], ["stop_after='soon'", "valid: an integer, or null"]),
    (["optim.lr=fast"], ["optim.lr='fast'", "valid: a number"]),
    (["-m", "seed=0,1,x"], ["seed='x'", "valid: an integer"]),
    (["-m", "precision=bf16,fp9"], ["unknown precision='fp9'", "valid: bf16"]),
    (["-m", "seed=range(-1,2)"], ["seed=-1", "valid: >= 0"]),
    (["-m", "model=glob(*)", "precision=fp8_tensorwise", "model.d_ff=200"], ["cannot run fp8_tensorwise"]),
], ids=["top_typo", "nested_typo", "other_scaling_knob", "optional_int", "float", "sweep_value", "sweep_choice",
        "range_sweep_cell", "glob_sweep_cell"])
def test_bad_overrides_are_one_line_before_hydra(args, needles):
    with pytest.raises(BadInput) as e:
        check_overrides("pretrain", args)
    for needle in needles:
        assert needle in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args", [
    ["steps=5", "optim.lr=1e-3", "stop_after=null"],
    ["-m", "seed=0,1,2", "precision=bf16,fp8_tensorwise"],
    ["task=textfile", "task.path=/tmp/x.txt"],
    ["precision=fp8_delayed", "precision.margin=1", "precision.keep_high_precision.patterns=[lm_head,*.attn.*]"],
    ["+matrix=bf16-fp8-tis"],
    ["-m", "+matrix=glob(*)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", "logger.progress=false"],
    ["-m", "seed=range(0,3)", "optim.lr=interval(1e-4,1e-3)"],
])
def test_good_overrides_pass(args):
    recipe = "grpo" if any(a.startswith("+matrix") for a in args) else "pretrain"
    check_overrides(recipe, args)


@pytest.mark.parametrize("group,choice", [("precision", "fp8_blockwise"), ("model", "125m"), ("precision", "bf16")])
def test_load_choice_gives_the_option_as_a_recipe_composes_it(group, choice):
    from bench.config import load_choice

    got = load_choice(group, choice)
    assert got == compose_cfg("pretrain", [f"{group}={choice}"])[group] and "defaults" not in got
    if choice == "fp8_blockwise":
        assert got.keep_high_precision.patterns == ["lm_head"]  # a schema default the YAML no longer repeats
