"""model=hf bad inputs (tests/badinputs.py BAD_HF): each broken checkpoint directory is refused by
the real entry point, in this process, in one line with exit 2, before a run dir, a lock or the
GRPO warm-up exist; and the good directory of the same set passes the validation pass."""
import pytest

pytest.importorskip("transformers")

from badinputs import BAD_HF
from hf_dirs import make_dirs
from test_validation import check_case, one_line_error, recipe_args


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    return {k: str(v) for k, v in make_dirs(tmp_path_factory.mktemp("hf")).items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in BAD_HF])
def test_bad_hf_checkpoint_is_one_line_exit_2_and_leaves_no_run_dir(case, hf_dirs, tmp_path):
    overrides = [o.split("=", 1)[0] + "=" + hf_dirs.get(o.split("=", 1)[1], o.split("=", 1)[1]) for o in case.overrides]
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    line = one_line_error(recipe_args(case.recipe, overrides, run_dir, cache))
    check_case(case, line, run_dir, cache)


def test_the_good_hf_checkpoint_passes_validation(hf_dirs):
    from helpers import compose_cfg

    from bench.config.validate import validate

    checked = validate(compose_cfg("grpo", ["model=hf", f"model.path={hf_dirs['{hf_good}']}",
                                            "generator_precision=nvfp4"]), "grpo", dirs=False)
    assert (checked.model.arch, checked.model.vocab_size, checked.model.d_model) == ("qwen2", 128, 64)
