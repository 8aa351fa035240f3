"""The generator: samples rollouts with its own copy of the policy, in its own precision.

("Engine" in this project means a precision executor, bench/precision/engines.py; the generator
is the rollout side, the counterpart of the trainer.) Why a separate generator: in RL systems the sampler (vLLM, SGLang) is not the trainer. It holds its
own weights (refit from the trainer after every update), runs its own kernels and precision
(often FP8 W8A8 and an FP8 KV cache) and decodes incrementally with a KV cache, while the trainer
scores the same tokens with one full forward. Every difference between the two computations is
trainer/generator mismatch, the thing this benchmark measures; reusing the trainer's modules,
buffers or caches would hide exactly that. So the engine builds its own Transformer, copies
weights at `refit` (never aliasing a trainer tensor) and owns its KV caches and sampling RNG.

Precision (`precision` = a name or a generator_precision config): planned and applied by the
same planner as the trainer (bench.precision.plan, side="generator"), so a recipe added to the
registry runs here with no change to this package.
  fp32          the copy as is, no autocast
  bf16, fp16    fp32 weights under the trainer's own `autocast_context`: with full recompute
                (use_kv_cache=False) the reported log-probs are then bitwise the trainer's, so
                token_mult_prob_error == 1 exactly: the harness's zero point
  a scaling recipe  the `inference` engine under bf16 autocast: W8A8, or W8A16 with
                `weights_only=true` (bench/precision/inference.py); kept Linears
                (`keep_high_precision`, default lm_head) stay bf16
Kernels (`kernels`, DESIGN §11): `exact` runs the trainer's ops; each switch of
bench/generation/kernels.py replaces one of them with what an inference engine runs.
KV cache: `kv_cache_dtype` "auto" (the compute dtype) or "fp8" (bench/models/kvcache.py),
with `kv_cache_headroom` >= 1 dividing the FP8 scale (room for decoded values above the prefill's).

Log-probs: for each sampled token the rollout carries
  logprobs              the behaviour policy: log p under the distribution actually sampled
                        from, softmax(logits / T) after top-k / top-p truncation and
                        renormalisation over the kept set
  logprobs_untruncated  log p under softmax(logits / T), no truncation
  kept_mask             [B, N, V] bool, the kept set of each step (None when nothing truncates)
Two comparisons use them. Mismatch metrics compare *untruncated* distributions: the trainer
recomputes softmax(logits / T) over the full vocabulary, so both sides compare the same
distribution and differ only by numerics (the truncated value is larger by -log(kept mass);
comparing it with the trainer's would report the filter as "mismatch"). Importance weights need
the policy actually sampled from: ρ = π_train(y | kept) / π_behaviour(y), with the trainer's
probabilities renormalised over the same kept set,
  log π_train(y | kept) = lp_t(y) − logsumexp_{v ∈ kept} lp_t(v),
and `logprobs` as the behaviour log-prob (at top_p = 0.9 the untruncated ratio is off by ~1.09).
`logprobs_mode` (generator.logprobs_mode): `processed` (the default) is the above. `raw` is
what vLLM reports by default (vllm/v1/sample/sampler.py, ModelConfig `logprobs_mode` =
"raw_logprobs"): log_softmax of the raw logits, before temperature, top-k and top-p, in fp32, as
*both* fields, with no kept set. A stack that keeps vLLM's default then feeds exactly that to its
mismatch metrics and IS correction (against the trainer's tempered log-prob): at T != 1 or
top_p < 1 that is an error of the stack, not of the numerics, and `raw` measures it.
Temperature 0 is greedy (argmax); its log-probs (both fields) are those of softmax(logits), T = 1,
so the trainer should score greedy rollouts at T = 1.

Shapes: all prompts have the same length P (the tasks emit fixed-width prompts); a rollout is
always P + max_new_tokens wide, whatever step the last sequence stopped at. Fixed width is what
makes the full-recompute path exact: it runs every step on the same [B, P+N-1] input the trainer
will score (future positions hold padding, which causal attention never reads), because CPU
attention kernels round differently at different sequence lengths.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.errors import BadInput
from bench.generation.kernels import install_kernels, kernel_config
from bench.models.decoder import ModelConfig, token_logprobs
from bench.models import empty_model, new_kv_cache
from bench.models.kvcache import KVScales
from bench.precision.mixed import autocast_context, compute_dtype
from bench.precision.plan import apply_precision, plan_precision
from bench.perf.timing import phase


@dataclass
class Rollout:
    tokens: torch.Tensor                # [B, P+N] long: prompt + response, `eos_id` after a stop
    response_mask: torch.Tensor         # [B, N] bool: valid response tokens, the EOS included
    logprobs: torch.Tensor              # [B, N] fp32: behaviour policy (truncated, renormalised): IS weights
    logprobs_untruncated: torch.Tensor  # [B, N] fp32: under softmax(logits / T): mismatch metrics
    kept_mask: torch.Tensor | None = None  # [B, N, V] bool: each step's kept set; None: no truncation
    kv_saturation_frac: float = 0.0     # FP8 KV cache: fraction of decode-written K/V elements clipped


def truncate_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the sampling set to -inf: first the top-k (0 = off), then the nucleus,
    the smallest set of most likely tokens whose probability reaches top_p (1.0 = off)."""
    if top_k and top_k < logits.shape[-1]:
        idx = logits.topk(top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))
    if top_p < 1.0:
        sorted_l, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_l.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps the first).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


LOGPROBS_MODES = ("processed", "raw")  # generator.logprobs_mode; the first is the default


def sample_step(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, rng: torch.Generator,
                logprobs_mode: str = LOGPROBS_MODES[0]):
    """One decode step from last-position logits [B, V] -> (tokens, logprobs, logprobs_untruncated,
    kept [B, V] bool or None when nothing is truncated). logprobs_mode "raw" reports vLLM's
    default instead (see the module docstring): both log-probs are log_softmax(raw logits), and
    kept None, whatever the sampling; the token is drawn exactly as in "processed"."""
    tok, lp, lpu, kept = _sample(logits, temperature, top_k, top_p, rng)
    if logprobs_mode == "raw":
        raw = torch.log_softmax(logits.float(), dim=-1).gather(-1, tok[:, None])[:, 0]
        return tok, raw, raw, None
    return tok, lp, lpu, kept


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, rng: torch.Generator):
    if temperature == 0:  # greedy; log-probs at T = 1 (see the module docstring)
        tok = logits.argmax(-1)
        lp = token_logprobs(logits[:, None], tok[:, None])[:, 0]
        return tok, lp, lp, None
    # The same ops, in the same order, as bench.models.decoder.token_logprobs: the untruncated log-prob
    # must be bitwise what the trainer computes from bitwise-equal logits.
    scaled = logits.float() / temperature
    logp_full = torch.log_softmax(scaled, dim=-1)
    kept = None
    logp = logp_full
    if bool(top_k and top_k < logits.shape[-1]) or top_p < 1.0:
        truncated = truncate_logits(scaled, top_k, top_p)
        kept = torch.isfinite(truncated)
        logp = torch.log_softmax(truncated, dim=-1)
    tok = torch.multinomial(logp.exp(), 1, generator=rng)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0], logp_full.gather(-1, tok[:, None])[:, 0], kept


class Generator:
    """An inference engine with its own Transformer, precision, KV cache and sampling RNG."""

    def __init__(self, model_cfg: ModelConfig, precision="bf16", device="cpu", kv_cache_dtype: str = "auto",
                 kv_cache_headroom: float = 1.0, seed: int = 0, kernels=None, lm_head_fp32: bool = False,
                 logprobs_mode: str = LOGPROBS_MODES[0]):
        if kv_cache_dtype not in ("auto", "fp8"):
            raise BadInput(f"generator.kv_cache_dtype={kv_cache_dtype!r}; valid: auto, fp8")
        if logprobs_mode not in LOGPROBS_MODES:
            raise BadInput(f"generator.logprobs_mode={logprobs_mode!r}; valid: {', '.join(LOGPROBS_MODES)}")
        self.logprobs_mode = logprobs_mode
        if not kv_cache_headroom >= 1.0:
            raise BadInput(f"generator.kv_cache_headroom={kv_cache_headroom!r}; valid: a number >= 1 "
                           f"(the prefill's amax maps to 448 / headroom)")
        self.cfg, self.device = model_cfg, torch.device(device)
        self.kv_fp8, self.kv_headroom = kv_cache_dtype == "fp8", float(kv_cache_headroom)
        self.model = self._build(model_cfg, self.device)
        # The refit contract: exactly the persistent state of a plain Transformer.
        self._keys = list(self.model.state_dict())
        self.plan, engine = plan_precision(self.model, precision, self.device, side="generator")
        apply_precision(self.model, self.plan, engine)
        self.name = self.plan.name
        self._quantized = {n: self.model.get_submodule(n) for n in self.plan.fp8_modules}
        # Its kernels (bench/generation/kernels.py; None = exact, the trainer's own ops).
        self.kernels = kernel_config(kernels)
        self._quantized = install_kernels(self.model, self.kernels, compute_dtype(self.name), self._quantized,
                                          bool(self.plan.fp8_modules), lm_head_fp32)
        # kv_scales=calculated: vLLM's per-layer scales from the engine's first batch, kept for its lifetime.
        self.kv_scales = KVScales(model_cfg.n_layers)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.refits = 0

    @property
    def engine_name(self) -> str:
        return self.plan.engine

    @staticmethod
    def _build(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
        """Its own model of the configured kind (bench.models.empty_model): built on the meta
        device, no random init and no draw from the caller's global RNG; zeros until the first
        refit; RoPE tables recomputed as the trainer's model computes them."""
        return empty_model(cfg, device)

    def context(self):
        """The autocast the generator's forwards run under (the trainer's for bf16/fp16)."""
        return autocast_context(self.name, self.device)

    @torch.no_grad()
    def refit(self, trainer_model: torch.nn.Module) -> None:
        """Load the trainer's current weights: copied into this engine's own tensors (FP8 Linears
        quantize them once, here), so nothing is ever shared with the trainer and later optimizer
        steps cannot reach the generator until the next refit."""
        src = trainer_model.state_dict()
        missing = [k for k in self._keys if k not in src]
        if missing:
            raise ValueError(f"refit: the trainer's state lacks {missing[:3]} (not this model config?)")
        own = self.model.state_dict()
        for k in self._keys:
            s = src[k].detach()
            if hasattr(s, "full_tensor"):  # an FSDP2-sharded trainer: all-gather (every rank, same order)
                s = s.full_tensor()
            mod = self._quantized.get(k.rsplit(".", 1)[0]) if k.endswith(".weight") else None  # a bias is copied
            if mod is not None:
                mod.load_weight(s)  # checks the shape, quantizes into fresh buffers
            elif tuple(s.shape) != tuple(own[k].shape):
                raise ValueError(f"refit: {k} is {tuple(s.shape)} in the trainer, {tuple(own[k].shape)} here")
            else:
                own[k].copy_(s)
        self.refits += 1

    def get_rng_state(self) -> torch.Tensor:
        """The engine's own sampling RNG state (for checkpoints: resuming continues the stream)."""
        return self.rng.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.rng.set_state(state)

    def _rng(self, seed) -> torch.Generator:
        if isinstance(seed, torch.Generator):
            return seed  # the caller owns (and checkpoints) this stream
        if seed is not None:
            self.rng.manual_seed(int(seed))
        return self.rng

    def _check(self, prompts: torch.Tensor, n: int) -> None:
        if self.refits == 0:
            raise RuntimeError("Generator has no weights yet: call refit(trainer_model) first")
        if prompts.dim() != 2 or prompts.dtype != torch.long or prompts.shape[1] == 0:
            raise ValueError(f"prompts must be a [B, P] long tensor with P >= 1, "
                             f"got {tuple(prompts.shape)} {prompts.dtype}")
        if prompts.shape[1] + n - 1 > self.cfg.max_seq_len:
            raise ValueError(f"prompt length {prompts.shape[1]} + max_new_tokens {n} - 1 exceeds "
                             f"model.max_seq_len={self.cfg.max_seq_len}")

    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_id: int | None = None, seed: int | torch.Generator | None = None,
                 use_kv_cache: bool = True, *, generator: torch.Generator | None = None) -> Rollout:
        """Sample up to `max_new_tokens` per prompt (see the module docstring for the log-probs).

        seed: a torch.Generator (used as is; `generator=` is the same thing by keyword), an int
        (reseeds the engine's own RNG), or None (continues the engine's own RNG stream). Every
        step draws for every row, finished or not, so a row's draws do not shift with where its
        batch-mates stopped. eos_id None (or outside the vocabulary) never stops a sequence.
        use_kv_cache=False recomputes the whole sequence every step: the reference path the KV
        cache is tested against, and with the trainer's precision bitwise the trainer's numbers."""
        if not (temperature >= 0 and top_k >= 0 and 0 < top_p <= 1 and max_new_tokens >= 1):
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1, max_new_tokens >= 1; got "
                             f"{temperature}, {top_k}, {top_p}, {max_new_tokens}")
        self._check(prompts, max_new_tokens)
        rng = self._rng(generator if generator is not None else seed)
        B, P, N, dev = prompts.shape[0], prompts.shape[1], max_new_tokens, self.device
        if eos_id is not None and not 0 <= eos_id < self.cfg.vocab_size:
            eos_id = None  # no token can match it: never stops (benchmarks pass -1)
        pad = 0 if eos_id is None else eos_id  # fills positions after a stop (and not yet sampled)
        with torch.inference_mode(), self.context():
            with phase("rollout_prefill"):  # buffers, KV cache and the prompt forward (bench/perf/timing.py)
                tokens = torch.full((B, P + N), pad, dtype=torch.long, device=dev)
                tokens[:, :P] = prompts.to(dev)
                mask = torch.zeros(B, N, dtype=torch.bool, device=dev)
                lp, lpu = torch.zeros(B, N, device=dev), torch.zeros(B, N, device=dev)
                done = torch.zeros(B, dtype=torch.bool, device=dev)
                cache = None
                if use_kv_cache:  # the last sampled token is never fed back: P + N - 1 positions
                    cache = new_kv_cache(self.cfg, B, P + N - 1, compute_dtype(self.name), dev, fp8=self.kv_fp8,
                                         headroom=self.kv_headroom, scales=self.kernels.kv_scales,
                                         store=self.kv_scales)
                    logits = self.model(tokens[:, :P], cache=cache, pos=0)[:, -1]
                else:
                    logits = self.model(tokens[:, :-1])[:, P - 1]
            with phase("rollout_decode"):  # the sampling loop, one forward per token
                kept = None  # [B, N, V] once a step truncates; rows after a stop stay False (masked out)
                for t in range(N):
                    tok, lp_t, lpu_t, kept_t = sample_step(logits, temperature, top_k, top_p, rng, self.logprobs_mode)
                    tok = torch.where(done, pad, tok)
                    tokens[:, P + t], mask[:, t] = tok, ~done
                    if kept_t is not None:
                        if kept is None:
                            kept = torch.zeros(B, N, kept_t.shape[-1], dtype=torch.bool, device=dev)
                        kept[:, t] = kept_t & ~done[:, None]
                    lp[:, t], lpu[:, t] = lp_t.masked_fill(done, 0.0), lpu_t.masked_fill(done, 0.0)
                    if eos_id is not None:
                        done = done | (tok == eos_id)
                    if t == N - 1 or (eos_id is not None and bool(done.all())):
                        break
                    logits = (self.model(tok[:, None], cache=cache, pos=P + t)[:, -1] if use_kv_cache
                              else self.model(tokens[:, :-1])[:, P + t])
            sat = cache.saturation_frac() if cache is not None else 0.0
        # Clones made outside inference mode are ordinary tensors, which the trainer's autograd
        # may use (an inference tensor cannot be saved for backward, e.g. as embedding indices).
        return Rollout(tokens.clone(), mask.clone(), lp.clone(), lpu.clone(),
                       None if kept is None else kept.clone(), sat)

    def score(self, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs [B, N] of tokens[:, prompt_len:] under this engine's model and precision, by one
        full forward (teacher forcing): scores given tokens, e.g. another engine's rollout."""
        if self.refits == 0:
            raise RuntimeError("Generator has no weights yet: call refit(trainer_model) first")
        P, T = prompt_len, (temperature if temperature > 0 else 1.0)
        with torch.inference_mode(), self.context():
            tokens = tokens.to(self.device)
            out = token_logprobs(self.model(tokens[:, :-1])[:, P - 1:], tokens[:, P:], T)
        return out.clone()

    def quantized_modules(self) -> dict[str, torch.nn.Module]:
        """The Linears the inference engine swapped in, by dotted name."""
        return dict(self._quantized)
