"""GRPO step time: HF tiny (Llama, tiny dims) vs built-in tiny, same shape, one process, side by side."""
import statistics, sys, tempfile, json
sys.path.insert(0, "tests"); sys.path.insert(0, ".")
from helpers import read_jsonl, run_in_process
common = ["task=addition", "steps=8", "eval_every=8", "checkpoint_every=8", "eval_problems=8", "warmup.steps=10",
          "trainer_precision=bf16", "generator_precision=bf16", "monitor.interval=0"]
out = {}
with tempfile.TemporaryDirectory() as tmp:
    for label, extra in [("builtin tiny", ["model=tiny"]), ("hf llama tiny", ["model=hf", "model.arch=llama"]),
                         ("builtin tiny (2nd)", ["model=tiny"]), ("hf llama tiny (2nd)", ["model=hf", "model.arch=llama"])]:
        d = f"{tmp}/run{len(out)}"
        assert run_in_process("grpo", common + extra + [f"run_dir={d}", f"warmup.cache_dir={tmp}/c"]) == 0
        t = [m["train/step_time_s"] for m in read_jsonl(__import__("pathlib").Path(d) / "metrics.jsonl")][1:]
        out[label] = statistics.median(t)
        print(label, f"{out[label]:.4f}", flush=True)
print(json.dumps(out))
