"""Throughput benchmark: what each precision costs in time, FLOP utilisation and memory, on one device.

    python -m bench.benchmarks.throughput --model 125m --batch 16 --seq-len 1024 --warmup 5 --steps 20 \
        --json docs/bench/gpu.json --append-md docs/benchmarks.md

Every number below comes from one process, so every ratio compares rows measured side by side.
This is the one benchmark home (scripts/bench_precision.py is its CPU-tiny shorthand), with one
ratio convention: "x of bf16 throughput" = bf16 step time / row step time (equivalently row
tokens/s / bf16 tokens/s): > 1 is faster than bf16, < 1 slower. Overheads (the monitor) are
on / off time − 1, in percent.

Train rows. A pretrain step = forward + backward + AdamW step (clip, policy checks: the recipes'
own `Trainer.step`) on a fixed batch of random tokens [batch, seq_len]. The model is built as the
recipes build it: `plan_precision` -> `apply_precision` -> `Trainer`, with conf/precision/<name>.yaml
and `engine` set per row. Rows: bf16 and every FP8 recipe on every engine this device has:
`reference` always, `torchao` (tensorwise, rowwise) when it imports, `te` when
transformer_engine imports (`--engines` forces a list; an engine that cannot run here becomes an
error row). On CUDA the torchao rows and a `bf16+compile` twin run under torch.compile (torchao's
FP8 casts are only fast fused); on CPU only with --compile. A compiled row is compared with
bf16+compile, an eager row with eager bf16.
  step_s_median  median over --steps timed steps after --warmup untimed ones (compile, allocator
                 and kernel autotuning land in warm-up); torch.cuda.synchronize() brackets each
                 step on CUDA, so the time is the GPU's, not the launch queue's
  tokens_per_s   batch * seq_len / step_s_median
  speedup        x of bf16 throughput: bf16 median / row median (> 1: faster than bf16)
  peak_mem_gib   torch.cuda.max_memory_allocated after reset_peak_memory_stats at the row's start:
                 weights, fp32 master/AdamW state, activations, FP8 copies. CPU: null (torch keeps no
                 allocator peak for CPU tensors; process RSS would mix in earlier rows and libraries)
  flops_per_token  = 6*N + 12*n_layers*d_model*seq_len, PaLM's MFU convention (Chowdhery et al.
                 2022, appendix B). N = the non-embedding parameters that multiply activations: per
                 layer q,k,v,o (4*d^2) and SwiGLU gate/up/down (3*d*d_ff), plus lm_head (d*V, a
                 GEMM even when tied). The input embedding is a lookup and norm gains are
                 elementwise, so neither counts. 6 = 2 (multiply-add) * 3 (forward, grad of the
                 input, grad of the weight). 12*L*d*T is QK^T and AV (2 GEMMs of 2*T*d per token,
                 x3 for fwd+bwd) over the full T x T square: causal masking's half is not
                 subtracted (the convention), and recomputation is never counted (model FLOPs, not
                 hardware FLOPs)
  mfu            tokens_per_s * flops_per_token / peak. Peak dense TFLOP/s by device name: H100 SXM
                 and H200 bf16 989.4, fp8 1978.9; H100 PCIe 756 / 1513; anything else (CPU, MIG,
                 NVL, GH200, other GPUs) null, unless --peak-tflops BF16 FP8 says so. FP8 rows give
                 `mfu` against the bf16 peak (the standard, comparable number: same work, same
                 denominator) and `mfu_vs_fp8_peak` against the fp8 peak (how close to the FP8
                 tensor-core ceiling; attention, norms and lm_head stay bf16, so 100% is unreachable)
Monitor overhead: bf16 and fp8_tensorwise (engine: the first of te > torchao > reference whose
train row ran), eager, `NumericsMonitor` at --monitor-interval N vs off (interval 0: only the
per-block non-finite count, as `monitor=off`), back to back; ratio of MEAN step times, since the
cost lands on 1 step in N, which a median hides. Sampled: warm-up's first step, the first timed
step and every N-th after it (`sampled_steps`: ceil(steps / N) of the timed ones).
Decode rows: `Generator` (bf16, and W8A8 fp8_tensorwise / fp8_blockwise), KV cache on, no EOS, every
sequence generates --new-tokens; tokens/s = decode_batch * new_tokens / median generate time,
one warm-up generate each, then --decode-repeats round-robin. A row that fails (engine unsupported
here, OOM, compile error) records its one-line error; the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.generation import Generator
from bench.config.overrides import CONF
from bench.config.schema import ModelConfig  # the model group's schema: either kind (bench/models)
from bench.models import build_model
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.policy import InstabilityPolicy
from bench.precision.engines import ENGINES
from bench.precision.plan import apply_precision, plan_precision
from bench.precision.mixed import HIGH_PRECISION, is_fp8
from bench.precision.recipes import RECIPES
from bench.run.rundir import device_string, versions
from bench.run.session import typed
from bench.train.trainer import OptimConfig, Trainer
from bench.benchmarks.flops import flops_per_token, matmul_params, mfu, peak_tflops  # noqa: F401  (the MFU formulas)

ENGINE_ORDER = ("te", "torchao", "reference")  # the `auto` priority of bench.precision.engines
def load_model_cfg(name: str, sets: list[str] | None = None) -> ModelConfig:
    """conf/model/<name>.yaml, with `--set key=value` overrides (e.g. a CPU smoke of qwen2_0p5b's
    architecture at tiny sizes: --set n_layers=2 d_model=128 n_heads=2 d_ff=256 vocab_size=256)."""
    node = OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{name}.yaml"), OmegaConf.from_dotlist(sets or []))
    return typed(ModelConfig, node, "model")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin_times(runs: dict, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Time each callable `repeats` times, interleaved (run 1 of every row, then run 2, ...), so
    drift in machine load hits every row alike. Returns (seconds per row, errors per row); a row
    that raises (e.g. OOM) is dropped from later rounds and the others go on."""
    times, errors, live = {k: [] for k in runs}, {}, dict(runs)
    for _ in range(repeats):
        for k, run in list(live.items()):
            try:
                sync(device)
                t0 = time.perf_counter()
                run()
                sync(device)
                times[k].append(time.perf_counter() - t0)
            except Exception as e:
                errors[k] = one_line(e)
                del live[k]
    return times, errors


def one_line(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    return (msg if type(e).__name__ == "BadInput" else f"{type(e).__name__}: {msg}")[:300]


def fresh(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_row(a, cfg: ModelConfig, device, recipe: str, engine: str | None, compiled: bool,
              monitor_interval: int = 0) -> dict:
    """Build through the recipes' path, warm up, time. Raises on failure (caller records it)."""
    prec = OmegaConf.to_container(OmegaConf.load(CONF / "precision" / f"{recipe}.yaml"))
    if engine:
        prec["engine"] = engine
    torch.manual_seed(0)
    model = build_model(cfg, device)
    plan, eng = plan_precision(model, prec, device)
    apply_precision(model, plan, eng)
    monitor = NumericsMonitor(model, plan, monitor_interval, [], per_module=True)
    events: list = []
    trainer = Trainer(model, OptimConfig(), a.warmup + a.steps, plan, eng, monitor,
                      InstabilityPolicy({"action": "log"}, events.append), events.append, device)
    if compiled:
        torch._dynamo.reset()
    fwd = torch.compile(model) if compiled else model
    data = torch.randint(0, cfg.vocab_size, (a.batch, a.seq_len + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1].to(device), data[:, 1:].to(device)
    times, sampled, loss, warmup_s = [], [], float("nan"), 0.0
    t_start = time.perf_counter()
    for i in range(a.warmup + a.steps):
        sync(device)
        t0 = time.perf_counter()
        # Sampled: warm-up's first step (warms the monitor's path), the first timed one, every N-th after.
        monitor.begin_step(i - a.warmup if i >= a.warmup else (0 if i == 0 else -1))
        with trainer.context():
            logits = fwd(x)
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        trainer.backward(ce)
        loss = float(ce.detach())
        trainer.step(i, loss, x.numel(), t0)
        sync(device)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
            sampled.append(monitor.active)
        else:
            warmup_s = time.perf_counter() - t_start
    monitor.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"engine_used": plan.engine, "fp8_linears": len(plan.fp8_modules), "step_s": [round(t, 6) for t in times],
            "step_s_median": statistics.median(times), "step_s_mean": statistics.mean(times),
            "warmup_s": round(warmup_s, 3), "sampled_steps": sum(sampled),
            "peak_mem_gib": None if peak is None else round(peak, 3), "final_loss": loss, "events": len(events)}


def run_train(a, cfg, device, recipe, engine, compiled, peaks, fpt, monitor_interval=0, label=None) -> dict:
    label = label or (recipe if engine is None else f"{recipe}/{engine}") + ("+compile" if compiled else "")
    row = {"label": label, "recipe": recipe, "engine": engine, "compile": compiled, "monitor_interval": monitor_interval,
           "status": "ok", "error": None}
    print(f"[perf] {label} ...", end=" ", flush=True, file=sys.stderr)
    fresh(device)
    try:
        row.update(train_row(a, cfg, device, recipe, engine, compiled, monitor_interval))
    except Exception as e:  # engine unsupported here, OOM, compile failure: recorded, run goes on
        row.update(status="error", error=one_line(e), step_s_median=None, step_s_mean=None, peak_mem_gib=None)
    if compiled:
        torch._dynamo.reset()  # compiled code holds the model: free it before the next row measures memory
    fresh(device)
    med = row["step_s_median"]
    tps = a.batch * a.seq_len / med if med else None
    row.update(tokens_per_s=tps, achieved_tflops=tps * fpt / 1e12 if tps else None,
               mfu=mfu(tps, fpt, peaks and peaks[0]),
               mfu_vs_fp8_peak=mfu(tps, fpt, peaks and peaks[1]) if is_fp8(recipe) else None)
    print(f"{med * 1e3:.2f} ms" if med else row["error"], flush=True, file=sys.stderr)
    return row


def run_decode(a, cfg, device) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    src = build_model(cfg, device)
    prompts = torch.randint(3, cfg.vocab_size, (a.decode_batch, a.prompt_len),
                            generator=torch.Generator().manual_seed(0)).to(device)
    rows, runs = {}, {}
    for r in a.decode_recipes:
        rows[r] = {"label": f"{r} kv-cache", "recipe": r, "status": "ok", "error": None, "tokens_per_s": None}
        try:
            g = Generator(cfg, r, device)
            g.refit(src)
            run = lambda g=g: g.generate(prompts, a.new_tokens, temperature=1.0, eos_id=None, seed=0, use_kv_cache=True)
            run()  # warm-up
            runs[r], rows[r]["engine_used"] = run, g.engine_name
        except Exception as e:
            rows[r].update(status="error", error=one_line(e))
    del src
    times, errors = round_robin_times(runs, a.decode_repeats, device)
    for r, err in errors.items():  # e.g. OOM: this generator is out, the others went on
        rows[r].update(status="error", error=err)
    for r, ts in times.items():
        if rows[r]["status"] == "ok":
            rows[r].update(gen_s=[round(t, 6) for t in ts], gen_s_median=statistics.median(ts),
                           tokens_per_s=a.decode_batch * a.new_tokens / statistics.median(ts))
    runs.clear()
    fresh(device)
    base = rows.get("bf16", {}).get("tokens_per_s")
    ratios = {f"{r}_over_bf16": row["tokens_per_s"] / base for r, row in rows.items()
              if r != "bf16" and base and row["tokens_per_s"]}
    return list(rows.values()), ratios


def plan_rows(a, device) -> tuple[list[tuple], list[str]]:
    """(recipe, engine, compiled) for every train row, and the combinations skipped (and why)."""
    rows, skipped = [], []
    for r in a.recipes:
        if not is_fp8(r):
            rows.append((r, None, False))
            if r == "bf16" and a.compile:
                rows.append((r, None, True))
            continue
        for e in a.engines:
            why = ENGINES[e].unsupported(RECIPES[r])
            if why:
                skipped.append(f"{r}/{e}: {why}")
            else:
                rows.append((r, e, a.compile and e == "torchao"))
    return rows, skipped


def markdown(res: dict) -> str:
    c, v, sp = res["config"], res["versions"], res["ratios"]["train_speedup_vs_bf16"]
    ms = lambda s: "-" if s is None else f"{s * 1e3:.2f}"  # noqa: E731
    num = lambda x, f="{:.0f}": "-" if x is None else f.format(x)  # noqa: E731
    table = lambda head, rows: ["| " + " | ".join(head) + " |", "|---" * len(head) + "|", *rows]  # noqa: E731
    mem = "" if res["rows"] and res["rows"][0]["peak_mem_gib"] is not None else f"; memory: {res['peak_memory_note']}"
    out = [f"\n### {res['date']} · model {c['model']} · {res['device']}\n",
           f"`{res['command']}`  \ntorch {v['torch']}, torchao {v.get('torchao')}, transformer_engine "
           f"{v.get('transformer_engine')}; batch {c['batch']} x seq {c['seq_len']}, warm-up {c['warmup']}, median of "
           f"{c['steps']} timed steps; FLOPs/token {res['flops_per_token']:,} (6N + 12·L·d·T, N = {res['matmul_params']:,}); "
           f"peak bf16/fp8 TFLOP/s: {res['peak_tflops'] or 'unknown (MFU null)'}{mem}; x bf16 throughput: bf16 step / row step "
           f"(+compile rows vs bf16+compile)\n"]
    out += table(["row", "engine", "step (ms)", "tokens/s", "x bf16 throughput", "MFU (bf16 peak)", "MFU (fp8 peak)", "peak mem (GiB)"],
                 [f"| {r['label']} | {r['engine'] or '-'} | error: {r['error']} | | | | | |" if r["status"] != "ok" else
                  f"| {r['label']} | {r['engine_used']} | {ms(r['step_s_median'])} | {num(r['tokens_per_s'])} | "
                  f"{num(sp.get(r['label']), '{:.2f}x')} | {num(r['mfu'] and 100 * r['mfu'], '{:.1f}%')} | "
                  f"{num(r['mfu_vs_fp8_peak'] and 100 * r['mfu_vs_fp8_peak'], '{:.1f}%')} | {num(r['peak_mem_gib'], '{:.2f}')} |"
                  for r in res["rows"]])
    if res["monitor_rows"]:
        out.append(f"\nNumerics monitor, interval {c['monitor_interval']} vs off (mean step, eager):\n")
        out += table(["recipe", "engine", "off (ms)", "on (ms)", "overhead", "sampled timed steps"],
                     [f"| {rec} | {m['engine']} | {ms(m['off_s'])} | {ms(m['on_s'])} | "
                      f"{num(m['ratio'] and 100 * (m['ratio'] - 1), '{:+.1f}%')} | {m['sampled_steps']} |"
                      for rec, m in res["ratios"]["monitor_on_over_off"].items()])
    if res["decode_rows"]:
        out.append(f"\nDecode, KV cache, batch {c['decode_batch']}, prompt {c['prompt_len']}, {c['new_tokens']} new "
                   f"tokens, no EOS, median of {c['decode_repeats']}:\n")
        out += table(["generator", "tokens/s", "x bf16 throughput"],
                     [f"| {r['label']} | {num(r['tokens_per_s']) if r['status'] == 'ok' else 'error: ' + r['error']} | "
                      f"{num(res['ratios']['decode_over_bf16'].get(r['recipe'] + '_over_bf16'), '{:.2f}x')} |"
                      for r in res["decode_rows"]])
    if res["skipped"]:
        out.append("\nNot run (recipe unsupported by the engine): " + "; ".join(res["skipped"]))
    return "\n".join(out) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (DESIGN.md §8), not argparse's usage block
        print(f"fp8bench: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv) -> argparse.Namespace:
    ap = _Parser(prog="python -m bench.benchmarks.throughput", description="Train-step, MFU, memory and decode benchmark.")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override model keys (conf/model schema)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the model's max_seq_len")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--recipes", nargs="+", default=["bf16", *RECIPES], help="bf16 always runs (the baseline)")
    ap.add_argument("--engines", nargs="+", default=None, help="default: reference + those that import here")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the bf16 twin and torchao rows (default: on for CUDA only)")
    ap.add_argument("--monitor-interval", type=int, default=10, help="0 skips the monitor comparison")
    ap.add_argument("--decode-recipes", nargs="*", default=["bf16", "fp8_tensorwise", "fp8_blockwise"])
    ap.add_argument("--decode-batch", type=int, default=None, help="default: --batch")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, nargs=2, metavar=("BF16", "FP8"), default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="write the result here (else printed)")
    ap.add_argument("--append-md", default=None, help="append a dated markdown table to this file")
    a = ap.parse_args(argv)
    models = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    if a.model not in models:
        ap.error(f"unknown --model {a.model!r}; valid: {', '.join(models)}")
    valid = [*HIGH_PRECISION, *RECIPES]
    for r in [*a.recipes, *a.decode_recipes]:
        if r not in valid:
            ap.error(f"unknown recipe {r!r}; valid: {', '.join(valid)}")
    for e in a.engines or []:
        if e not in ENGINE_ORDER:
            ap.error(f"unknown engine {e!r}; valid: {', '.join(ENGINE_ORDER)}")
    for k, lo in [*((k, 1) for k in ("batch", "steps", "prompt_len", "new_tokens", "decode_repeats", "seq_len",
                                      "decode_batch")), ("warmup", 0), ("monitor_interval", 0), ("threads", 0)]:
        if getattr(a, k) is not None and getattr(a, k) < lo:
            ap.error(f"--{k.replace('_', '-')}={getattr(a, k)} must be >= {lo}")
    if a.device != "auto" and not (a.device == "cpu" or a.device == "cuda" or
                                   (a.device.startswith("cuda:") and a.device[5:].isdigit())):
        ap.error(f"unknown --device {a.device!r}; valid: auto, cpu, cuda, cuda:N")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {a.device} but CUDA is not available here; valid: auto, cpu")
    if a.device.startswith("cuda:") and int(a.device[5:]) >= torch.cuda.device_count():
        ap.error(f"--device {a.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    a.recipes = ["bf16", *dict.fromkeys(r for r in a.recipes if r != "bf16")]
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = load_model_cfg(a.model, a.set)
    a.seq_len = a.seq_len or cfg.max_seq_len
    a.decode_batch = a.decode_batch or a.batch
    # RoPE tables are derived from max_seq_len, so a longer benchmark sequence just extends them.
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, a.seq_len, a.prompt_len + a.new_tokens - 1))
    a.compile = device.type == "cuda" if a.compile is None else a.compile
    a.engines = a.engines or [e for e in ("reference", "torchao", "te")
                              if e == "reference" or ENGINES[e].unavailable(device) is None]
    dev_name = device_string(device)
    peaks = tuple(a.peak_tflops) if a.peak_tflops else peak_tflops(dev_name)
    fpt = flops_per_token(cfg, a.seq_len)
    planned, skipped = plan_rows(a, device)
    print(f"[perf] {dev_name}: model {a.model} ({matmul_params(cfg) / 1e6:.1f}M matmul params), batch {a.batch} x "
          f"seq {a.seq_len}, {len(planned)} train rows, engines {a.engines}, compile {a.compile}", file=sys.stderr)

    rows = [run_train(a, cfg, device, r, e, c, peaks, fpt) for r, e, c in planned]
    by = {r["label"]: r for r in rows}
    speedup = {}
    for r in rows:
        base = by.get("bf16+compile" if r["compile"] else "bf16", {}).get("step_s_median")
        speedup[r["label"]] = base / r["step_s_median"] if base and r["step_s_median"] else None
    if "bf16+compile" in by and by["bf16"]["step_s_median"] and by["bf16+compile"]["step_s_median"]:
        speedup["bf16+compile_vs_bf16"] = by["bf16"]["step_s_median"] / by["bf16+compile"]["step_s_median"]

    monitor_rows, monitor = [], {}
    if a.monitor_interval:
        ok = {(r["recipe"], r["engine"]) for r in rows if r["status"] == "ok"}
        for rec in [r for r in ("bf16", "fp8_tensorwise") if r in a.recipes]:
            eng = None if rec == "bf16" else next((e for e in ENGINE_ORDER if (rec, e) in ok), None)
            if rec != "bf16" and eng is None:
                continue
            pair = [run_train(a, cfg, device, rec, eng, False, peaks, fpt, iv,
                              label=f"{rec}{'/' + eng if eng else ''} monitor {'@' + str(iv) if iv else 'off'}")
                    for iv in (0, a.monitor_interval)]
            monitor_rows += pair
            off, on = pair[0]["step_s_mean"], pair[1]["step_s_mean"]
            monitor[rec] = {"engine": pair[0].get("engine_used", eng), "off_s": off, "on_s": on,
                            "ratio": on / off if on and off else None, "sampled_steps": pair[1].get("sampled_steps")}
    decode_rows, decode = run_decode(a, cfg, device) if a.decode_recipes else ([], {})

    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": "python -m bench.benchmarks.throughput " + shlex.join(argv), "device": dev_name, "versions": versions(),
           "config": {**{k: v for k, v in vars(a).items() if k not in ("json", "append_md", "peak_tflops")},
                      "model_cfg": dataclasses.asdict(cfg), "threads": torch.get_num_threads()},
           "matmul_params": matmul_params(cfg), "flops_per_token": fpt,
           "flops_formula": "6*N + 12*n_layers*d_model*seq_len (PaLM app. B); N = Linear weights incl. lm_head",
           "peak_tflops": list(peaks) if peaks else None,
           "peak_memory_note": ("torch.cuda.max_memory_allocated per row" if device.type == "cuda" else
                                "null on CPU: torch keeps no allocator peak for CPU tensors (RSS would mix in "
                                "earlier rows and the libraries)"),
           "rows": rows, "skipped": skipped, "monitor_rows": monitor_rows, "decode_rows": decode_rows,
           "ratios": {"train_speedup_vs_bf16": speedup, "monitor_on_over_off": monitor, "decode_over_bf16": decode}}
    text, md = json.dumps(res, indent=2) + "\n", markdown(res)
    for path, content, mode in ((a.json, text, "w"), (a.append_md, md, "a")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, mode) as f:
                f.write(content)
    print(md if a.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
