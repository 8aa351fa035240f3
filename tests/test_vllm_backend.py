"""generator.backend=vllm, phase 1 (DESIGN §13): a real vLLM engine (its own venv and process)
agrees with HF transformers in fp32, follows in-place weight reloads, samples reproducibly, and
its raw / processed log-probs mean what vLLM documents.

The model is a tiny random Llama built here (no download, no tokenizer: the engine is driven by
token ids), initialised with std 0.1 so that its logits have realistic scales: with HF's default
0.02 every distribution is near uniform and any log-prob agreement is trivially tight. One engine
serves the module (start-up costs seconds); the processed-logprobs test starts a second one.
Skipped unless scripts/setup_vllm.sh has installed the vLLM venv.
"""
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench.generation.vllm_client import VLLMEngine, VLLMError, export_hf_dir, vllm_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
transformers = pytest.importorskip("transformers")
NOT_INSTALLED = "vLLM backend not installed: run scripts/setup_vllm.sh"

TOL = 1e-4  # fp32 engine vs fp32 HF: different kernels, same precision
PROMPTS = [[1, 17, 42, 99, 7], [1, 200, 3], [1, 5, 6, 7, 8, 9, 10, 11]]
COMPLETIONS = [[33, 12, 250, 4, 77, 90], [8, 8, 8, 151], [60, 61, 62, 63, 64, 65, 66, 67, 68]]


def tiny_llama(seed=0):
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def hf_logprobs(model, prompts, completions, temperature=1.0, top_p=1.0):
    """Per completion token: log-prob under HF's fp32 forward of prompt + completion, of the
    raw logits (defaults) or of the distribution vLLM samples from (temperature, then top-p as
    vllm/v1/sample/ops/topk_topp_sampler.py masks it)."""
    out = []
    for p, c in zip(prompts, completions):
        logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].float()
        logits = _top_p_mask(logits / temperature, top_p) if top_p < 1 else logits / temperature
        lp = torch.log_softmax(logits, dim=-1)
        out.append(lp.gather(1, torch.tensor(c)[:, None])[:, 0].tolist())
    return out


def _top_p_mask(logits, top_p):
    srt, idx = logits.sort(dim=-1)
    drop = srt.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[:, -1] = False
    return logits.scatter(-1, idx, srt.masked_fill(drop, -math.inf))


def max_abs_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if not vllm_available():
        pytest.skip(NOT_INSTALLED)
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def engine(model_dir):
    with VLLMEngine(model_dir, dtype="float32", logprobs_mode="raw", max_model_len=256) as eng:
        yield eng


def test_missing_venv_is_one_line_naming_the_setup_script(tmp_path):
    with pytest.raises(VLLMError, match="^vLLM backend not installed: .*scripts/setup_vllm.sh$"):
        VLLMEngine(tmp_path, python=tmp_path / "no-venv" / "bin" / "python")


def test_unsupported_precision_is_refused_with_one_line(model_dir):
    with pytest.raises(VLLMError) as err:  # vLLM's fp8 weight quantization needs bf16/fp16
        VLLMEngine(model_dir, dtype="float32", quantization="fp8", max_model_len=256)
    msg = str(err.value)
    assert "\n" not in msg and "float32 is not supported for quantization method fp8" in msg
    log_dir = re.search(r"\(log: (.+)\)$", msg)  # a failed start keeps the worker's log
    if log_dir:
        shutil.rmtree(Path(log_dir.group(1)).parent, ignore_errors=True)


def test_engine_reports_its_precision(engine):
    info = engine.info()
    assert (info["dtype"], info["kv_cache_dtype"], info["logprobs_mode"]) == \
        ("float32", "auto", "raw_logprobs")
    assert info["vllm"]


def test_fp32_teacher_forced_logprobs_match_hf(engine):
    ref = hf_logprobs(tiny_llama(), PROMPTS, COMPLETIONS)
    got = engine.score(PROMPTS, COMPLETIONS)
    assert [len(r) for r in got] == [len(c) for c in COMPLETIONS]
    assert max_abs_diff(got, ref) < TOL
    assert engine.score(PROMPTS, COMPLETIONS) == got  # scoring is deterministic


def test_reload_follows_three_successive_weight_updates(engine, tmp_path):
    model = tiny_llama()
    before = engine.score(PROMPTS, COMPLETIONS)
    gen = torch.Generator().manual_seed(1)
    try:
        for step in range(3):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
            secs = engine.reload(export_hf_dir(model.state_dict(), model.config,
                                               tmp_path / f"step{step}"))
            got = engine.score(PROMPTS, COMPLETIONS)
            assert secs > 0
            assert max_abs_diff(got, hf_logprobs(model, PROMPTS, COMPLETIONS)) < TOL
            assert max_abs_diff(got, before) > 1e-2  # not the old weights (nor a cached prefix)
            before = got
    finally:  # the module's engine goes back to the original weights, bit for bit
        original = tiny_llama()
        engine.reload(export_hf_dir(original.state_dict(), original.config, tmp_path / "orig"))
    assert max_abs_diff(engine.score(PROMPTS, COMPLETIONS),
                        hf_logprobs(original, PROMPTS, COMPLETIONS)) < TOL


def test_generate_returns_requested_tokens_reproducibly(engine):
    kw = dict(n=2, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    out = engine.generate(PROMPTS, **kw)
    assert [len(samples) for samples in out] == [2, 2, 2]
    for samples in out:
        for s in samples:
            assert len(s["token_ids"]) == len(s["logprobs"]) == 12
            assert all(math.isfinite(x) and x <= 0 for x in s["logprobs"])
            assert s["finish_reason"] == "length"
    assert engine.generate(PROMPTS, **kw) == out  # same seed: same tokens, same log-probs
    assert out[0][0]["token_ids"] != out[0][1]["token_ids"]  # samples of a prompt differ
    other = engine.generate(PROMPTS, **{**kw, "seed": 8})
    assert [s["token_ids"] for r in other for s in r] != [s["token_ids"] for r in out for s in r]


def test_generate_stops_on_stop_token(engine):
    out = engine.generate([PROMPTS[0]], max_tokens=40, temperature=1.0, seed=3, ignore_eos=True)
    first = out[0][0]["token_ids"]
    stopped = engine.generate([PROMPTS[0]], max_tokens=40, temperature=1.0, seed=3,
                              stop_token_ids=[first[4]])
    assert stopped[0][0]["token_ids"] == first[:first.index(first[4]) + 1]


def test_raw_and_processed_logprobs_of_sampled_tokens(engine, model_dir):
    kw = dict(n=1, max_tokens=10, temperature=0.7, top_p=0.9, seed=11, ignore_eos=True)
    raw = [r[0] for r in engine.generate(PROMPTS, **kw)]
    with VLLMEngine(model_dir, dtype="float32", logprobs_mode="processed",
                    max_model_len=256) as proc_engine:
        assert proc_engine.info()["logprobs_mode"] == "processed_logprobs"
        proc = [r[0] for r in proc_engine.generate(PROMPTS, **kw)]
    tokens = [s["token_ids"] for s in raw]
    assert [s["token_ids"] for s in proc] == tokens  # the mode changes what is reported only
    raw_lp, proc_lp = [s["logprobs"] for s in raw], [s["logprobs"] for s in proc]
    model = tiny_llama()
    # raw: log_softmax of the raw logits, before temperature and top-p
    assert max_abs_diff(raw_lp, hf_logprobs(model, PROMPTS, tokens)) < TOL
    # processed: the distribution sampled from (T = 0.7, top-p 0.9 renormalised)
    assert max_abs_diff(proc_lp, hf_logprobs(model, PROMPTS, tokens, 0.7, 0.9)) < TOL
    assert max_abs_diff(raw_lp, proc_lp) > 1e-2
