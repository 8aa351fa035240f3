"""bench/benchmarks/throughput.py on CPU: the FLOP and MFU formulas, the smoke run's JSON, error rows, argument errors.
Speed itself is never asserted (DESIGN.md §9); a timeout only catches a hang."""
import json
import math
import statistics

import pytest
import torch

from bench.benchmarks import throughput as perf
from bench.models.decoder import ModelConfig, Transformer
from helpers import run_cli

ROW_KEYS = {"label", "recipe", "engine", "compile", "status", "error", "step_s_median", "step_s_mean",
            "tokens_per_s", "achieved_tflops", "mfu", "mfu_vs_fp8_peak", "peak_mem_gib"}


def test_flops_per_token_matches_a_hand_count():
    cfg = perf.load_model_cfg("tiny")  # d 128, 4 layers, d_ff 384, vocab 128
    # per layer: q, k, v, o = 4 * 128*128 = 65,536; gate, up, down = 3 * 128*384 = 147,456
    # 4 layers: 851,968; lm_head 128*128 = 16,384 -> N = 868,352 (the embedding table is not counted)
    assert perf.matmul_params(cfg) == 868_352
    # 6N = 5,210,112; attention 12 * 4 layers * 128 * 96 tokens = 589,824
    assert perf.flops_per_token(cfg, 96) == 5_799_936
    assert perf.flops_per_token(cfg, 32) == 5_210_112 + 12 * 4 * 128 * 32


@pytest.mark.parametrize("tie", [False, True])
def test_matmul_params_are_the_models_linear_weights(tie):
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, d_ff=160, vocab_size=96, tie_embeddings=tie)
    model = Transformer(cfg)
    linears = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert perf.matmul_params(cfg) == sum(linears.values())


def test_mfu_math_and_peak_table():
    fpt = perf.flops_per_token(perf.load_model_cfg("125m"), 1024)
    assert perf.mfu(123_456.0, fpt, 989.4) == pytest.approx(123_456.0 * fpt / 989.4e12, rel=1e-12)
    assert perf.mfu(123_456.0, fpt, None) is None and perf.mfu(None, fpt, 989.4) is None
    assert perf.peak_tflops("NVIDIA H100 80GB HBM3") == (989.4, 1978.9)
    assert perf.peak_tflops("NVIDIA H200") == (989.4, 1978.9)
    assert perf.peak_tflops("NVIDIA H100 PCIe") == (756.0, 1513.0)
    for other in ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB",
                  "cpu (AMD EPYC, 2 threads, AVX512)"):
        assert perf.peak_tflops(other) is None


def _check_ratios(res):
    rows = {r["label"]: r for r in res["rows"]}
    sp = res["ratios"]["train_speedup_vs_bf16"]
    for label, r in rows.items():
        base = rows["bf16+compile" if r["compile"] else "bf16"]["step_s_median"]
        if r["status"] == "ok":
            assert sp[label] == pytest.approx(base / r["step_s_median"], rel=1e-12)
            assert r["tokens_per_s"] == pytest.approx(res["config"]["batch"] * res["config"]["seq_len"] / r["step_s_median"])
            assert r["step_s_median"] == pytest.approx(statistics.median(r["step_s"]), abs=1e-6)  # step_s: 6 decimals
        else:
            assert sp[label] is None
    for rec, m in res["ratios"]["monitor_on_over_off"].items():
        pair = {r["monitor_interval"]: r for r in res["monitor_rows"] if r["recipe"] == rec}
        off, on = pair[0], pair[res["config"]["monitor_interval"]]
        assert m["ratio"] == pytest.approx(on["step_s_mean"] / off["step_s_mean"], rel=1e-12)
        assert m["sampled_steps"] == on["sampled_steps"] and off["sampled_steps"] == 0
    dec = {r["recipe"]: r for r in res["decode_rows"]}
    for key, v in res["ratios"]["decode_over_bf16"].items():
        assert v == pytest.approx(dec[key.removesuffix("_over_bf16")]["tokens_per_s"] / dec["bf16"]["tokens_per_s"])


def test_smoke_run_writes_json_with_rows_and_ratios(tmp_path):
    out = tmp_path / "out.json"
    # No wall-time assertion (DESIGN §9: speed lives in benchmarks, never in timed tests; under load
    # this smoke run once took 111 s): the timeout only catches a hang. Every row kind (train,
    # monitor on/off, decode) at small shapes: batch 2 x seq 32, 8 new tokens (the defaults, batch
    # 8 x seq 96 and 64 new tokens, took ~50 s on a CPU without native bf16).
    p = run_cli(["-m", "bench.benchmarks.throughput", "--model", "tiny", "--steps", "2", "--warmup", "1", "--batch", "2",
                 "--seq-len", "32", "--prompt-len", "8", "--new-tokens", "8", "--decode-repeats", "2",
                 "--recipes", "bf16", "fp8_tensorwise", "--device", "cpu", "--json", str(out), "--threads", "1"],
                timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["device"].startswith("cpu") and res["versions"]["torch"] == torch.__version__
    assert {"torchao", "transformer_engine"} <= set(res["versions"])
    assert res["config"]["model"] == "tiny" and res["config"]["steps"] == 2
    assert res["config"]["batch"] == 2 and res["config"]["seq_len"] == 32
    labels = [r["label"] for r in res["rows"]]
    assert labels[:2] == ["bf16", "fp8_tensorwise/reference"]
    for r in res["rows"] + res["monitor_rows"]:
        assert ROW_KEYS <= set(r), r["label"]
        assert r["status"] == "ok", r
        assert len(r["step_s"]) == 2 and all(t > 0 for t in r["step_s"])
        assert math.isfinite(r["final_loss"])
        # CPU: no peak FLOP/s and no allocator peak -> null, and the JSON says why
        assert r["peak_mem_gib"] is None and r["mfu"] is None and r["mfu_vs_fp8_peak"] is None
    assert res["peak_tflops"] is None and "CPU" in res["peak_memory_note"]
    assert res["flops_per_token"] == perf.flops_per_token(perf.load_model_cfg("tiny"), 32)
    assert set(res["ratios"]["monitor_on_over_off"]) == {"bf16", "fp8_tensorwise"}
    assert res["ratios"]["monitor_on_over_off"]["bf16"]["sampled_steps"] == 1  # ceil(2 / 10)
    assert [r["recipe"] for r in res["decode_rows"]] == ["bf16", "fp8_tensorwise", "fp8_blockwise"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in res["decode_rows"])
    _check_ratios(res)


def test_unsupported_engine_is_an_error_row_and_markdown_is_appended(tmp_path):
    md = tmp_path / "bench.md"
    md.write_text("# earlier content\n")
    out = tmp_path / "te.json"
    # 3 timed steps: a median that is not also the mean, so the ratios must come from the medians.
    # In this process (the smoke run above keeps `python -m` tested); no --threads: it would set
    # torch's thread count for every later test.
    assert perf.main(["--model", "tiny", "--steps", "3", "--warmup", "0", "--batch", "2", "--seq-len", "32",
                      "--recipes", "fp8_tensorwise", "fp8_rowwise", "--engines", "reference", "te", "--device", "cpu",
                      "--monitor-interval", "0", "--decode-recipes", "--json", str(out), "--append-md", str(md)]) == 0
    res = json.loads(out.read_text())
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["bf16", "fp8_tensorwise/reference", "fp8_tensorwise/te", "fp8_rowwise/reference"]
    te = rows["fp8_tensorwise/te"]
    assert te["status"] == "error" and "Transformer Engine" in te["error"] and "\n" not in te["error"]
    assert te["step_s_median"] is None and res["ratios"]["train_speedup_vs_bf16"]["fp8_tensorwise/te"] is None
    assert rows["fp8_rowwise/reference"]["status"] == "ok"  # the run went on after the error
    assert any(s.startswith("fp8_rowwise/te:") for s in res["skipped"])  # TE has no rowwise recipe
    assert res["monitor_rows"] == [] and res["decode_rows"] == []
    _check_ratios(res)
    text = md.read_text()
    assert text.startswith("# earlier content\n")
    assert "| fp8_tensorwise/te | te | error: " in text and "model tiny" in text and res["date"] in text


@pytest.mark.parametrize("args, needle", [
    (["--model", "7b"], "--model '7b'"),
    (["--recipes", "bf16", "fp9"], "recipe 'fp9'"),
    (["--decode-recipes", "int4"], "recipe 'int4'"),
    (["--engines", "cutlass"], "engine 'cutlass'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--steps", "0"], "--steps=0"),
    (["--warmup", "-1"], "--warmup=-1"),
    (["--batch", "x"], "--batch"),
])
def test_argument_errors_exit_2_with_one_line_before_compute(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(perf, "run_train", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(SystemExit) as e:
        perf.main(["--device", "cpu", *args] if "--device" not in args else args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fp8bench: error:") and needle in err and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda_is_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        perf.main(["--device", "cuda"])
    assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
