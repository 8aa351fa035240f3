"""In-run attribution (attribution.interval), recipes.attribute and the report's attribution section."""
import json

from omegaconf import OmegaConf

from bench.cli import main as fp8bench

from tests.helpers import QUIET, compose_cfg, read_jsonl, run_in_process
from test_validation import run_entry

SMALL = ["steps=2", "eval_every=100", "eval_problems=4", "grpo.prompts_per_step=2", "grpo.group_size=4",
         "checkpoint_every=2"]


# The exit-2 cases run the module's entry point in this process (tests/test_validation.py's
# run_entry: sys.argv set, stderr captured, SystemExit caught); test_validation's real-process
# cases keep the `python -m` wiring and the exit status the shell sees tested.
def test_attribute_without_a_policy_is_one_line_exit_2(tmp_path):
    code, stderr = run_entry(["-m", "recipes.attribute", f"init_from={tmp_path}/nothing", f"run_dir={tmp_path}/out",
                              "threads=1"])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "init_from=" in lines[0] and "valid:" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_kernel_switch_value_is_exit_2(tmp_path):
    code, stderr = run_entry(["-m", "recipes.grpo", "generator.kernels.fp8_activation_scaling=tensor",
                              f"run_dir={tmp_path}/r", "threads=1", "logger=disabled"])
    assert code == 2 and "fp8_activation_scaling" in stderr


def test_in_run_attribution_then_attribute_recipe_then_report(tmp_path):
    run = tmp_path / "run"
    assert run_in_process("grpo", SMALL + ["attribution.interval=2", f"run_dir={run}"]) == 0
    recs = read_jsonl(run / "attribution.jsonl")
    assert [r["step"] for r in recs] == [0]  # steps 0 and 1, every 2nd step
    assert set(recs[0]) == {"step", "sites", "first_divergent"}
    assert recs[0]["sites"][0]["site"] == "embed" and recs[0]["sites"][-1]["site"] == "logits"
    logged = [m for m in read_jsonl(run / "metrics.jsonl") if "attrib/logits/rel_diff" in m]
    assert [m["step"] for m in logged] == [0]

    from recipes import attribute
    cfg = compose_cfg("attribute", QUIET + ["grpo.prompts_per_step=2", "grpo.group_size=4", f"init_from={run}",
                                            f"run_dir={run}/attribution", "generator_precision=fp8_blockwise"])
    OmegaConf.resolve(cfg)
    result = attribute.run(cfg)
    attribute.write(result, run / "attribution")
    for f in ("attribution.md", "attribution.json", "attribution_heatmap.png", "attribution_ablation.png"):
        assert (run / "attribution" / f).is_file()
    abl = json.loads((run / "attribution" / "attribution.json").read_text())["ablation"]
    assert {"fp8:attn", "fp8:mlp", "weights_in_compute_dtype"} <= set(abl["sources"])
    assert abs(sum(r["share"] for r in abl["rows"]) - 1.0) < 1e-9

    assert fp8bench(["compare", str(run), "-o", str(tmp_path / "rep")]) == 0  # `python -m bench.cli compare`
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Where disagreement comes from" in md and "| fp8:attn |" in md
    assert (tmp_path / "rep" / "attrib_0.png").is_file()
