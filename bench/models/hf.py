"""model=hf: a Hugging Face causal LM behind the built-in model's interface.

The adapter holds the transformers model's own modules under the built-in names, so everything
that selects modules by name works unchanged:
  embed   <- model.embed_tokens        norm    <- model.norm
  layers  <- model.layers (the decoder layers; `layers.<i>.self_attn.q_proj`, `.mlp.down_proj`)
  lm_head <- lm_head                   rotary  <- model.rotary_emb (non-persistent inv_freq)
The transformers model object is kept as a plain attribute (`.hf`), not a submodule, so the
state-dict keys and Linear names are the adapter's (`layers.3.mlp.up_proj`), and
`.hf.save_pretrained` still writes a loadable checkpoint (it holds the very same modules).

forward(idx, cache, pos) runs the decoder layers itself (embedding -> rotary -> layers -> norm ->
lm_head -> fp32 logits), the way the HF model's forward does, minus its mask and cache machinery:
with no cache, or a cache at pos 0, attention is plain causal SDPA (mask None, which transformers'
SDPA path turns into is_causal=True); one decoded token attends to all cached positions; a prefill
chunk at pos > 0 gets an explicit [T, pos+T] causal mask. The cache is the generator's own
bench.models.kvcache.KVCache, reached through a view whose update(k, v, layer_idx) is the call
transformers' attention makes on a Cache: so quantize-on-write (the FP8 KV cache) works here too.

Padding: prompts are left-padded (bench/tasks/base.py) and no attention mask is passed, so pad
tokens are attended to. Trainer and generator see the same tokens, so mismatch metrics are
unaffected; a pretrained checkpoint's accuracy may be slightly lower than with a padding mask.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from bench.core.errors import BadInput
from bench.models.decoder import lm_head_logits
from bench.models.norms import engine_rms_norm

ARCHS = ("llama", "qwen2", "qwen3")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BadInput("model=hf needs the transformers package; valid: pip install transformers "
                       "(scripts/setup.sh installs it)") from None
    transformers.logging.set_verbosity_error()
    # Its tqdm bars ("Loading weights") are not logging: the trainer and the generator each load
    # the checkpoint, so every model=hf run printed the bar twice amid the harness's own lines.
    transformers.utils.logging.disable_progress_bar()
    return transformers


def arch_config(cfg, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
    """A transformers config for model.arch with the harness's size keys (random weights)."""
    tf = _transformers()
    if cfg.arch not in ARCHS:
        raise BadInput(f"model.arch={cfg.arch!r}; valid: {', '.join(ARCHS)} (or model.path=DIR)")
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, max_position_embeddings=cfg.max_seq_len,
                  rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                  pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    if cfg.arch == "llama":
        return tf.LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    if cfg.arch == "qwen2":
        return tf.Qwen2Config(use_sliding_window=False, **common)
    return tf.Qwen3Config(head_dim=cfg.d_model // cfg.n_heads, attention_bias=False, use_sliding_window=False,
                          **common)


def _check_path(path: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"model.path={path!r} holds no config.json; valid: a local directory written by "
                       f"save_pretrained (never a hub name: nothing is downloaded)")
    return p


def path_config(path: str):
    """DIR's config.json as transformers reads it (an unknown model_type is one line, not a traceback)."""
    import json

    try:
        return _transformers().AutoConfig.from_pretrained(str(_check_path(path)), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        try:
            kind = json.loads((Path(path) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            kind = None
        what = f"model_type {kind!r}" if kind else f"a config.json transformers cannot read ({str(e).splitlines()[0]})"
        raise BadInput(f"model.path={path!r} holds {what}; valid: model_type {', '.join(ARCHS)} "
                       f"(dense decoder-only causal LMs)") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_hf_tokenizer(path: str):
    no_files = f"model.path={path!r} holds no tokenizer files; valid: a directory with tokenizer.json (or " \
               f"the model's tokenizer files: tok.save_pretrained(DIR))"
    if not any((_check_path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise BadInput(no_files)
    try:
        tok = _transformers().AutoTokenizer.from_pretrained(str(_check_path(path)), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise BadInput(f"model.path={path!r}: no tokenizer could be loaded ({str(e).splitlines()[0]}); "
                       f"valid: a directory with tokenizer.json (or the model's tokenizer files)") from None
    if tok is None or isinstance(tok, bool):
        raise BadInput(no_files)
    return tok


def resolve_hf(cfg):
    """Sizes of a model.path checkpoint copied into the harness's config (the generator's KV cache,
    the validation pass and the logs read them); max_seq_len is the checkpoint's context unless
    the user set a smaller one."""
    if not cfg.path:
        if not cfg.arch:
            raise BadInput("model=hf needs model.path=DIR (a local checkpoint) or model.arch=ARCH; "
                           f"valid archs: {', '.join(ARCHS)}")
        return cfg
    from bench.models.hf_checks import check_config, check_weights

    c = path_config(cfg.path)
    check_config(cfg.path, c, ARCHS)
    text = getattr(c, "text_config", None) or c
    import dataclasses
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if head_dim * heads != text.hidden_size:
        raise BadInput(f"model.path={cfg.path!r}: head_dim {head_dim} x {heads} heads != hidden {text.hidden_size}; "
                       f"valid: models whose attention width equals the hidden size")
    check_weights(cfg.path, c, _meta_shapes(c))
    return dataclasses.replace(
        cfg, arch=c.model_type, vocab_size=text.vocab_size, d_model=text.hidden_size, n_layers=text.num_hidden_layers,
        n_heads=heads, n_kv_heads=getattr(text, "num_key_value_heads", heads) or heads,
        d_ff=getattr(text, "intermediate_size", cfg.d_ff), tie_embeddings=bool(c.tie_word_embeddings),
        max_seq_len=min(cfg.max_seq_len, text.max_position_embeddings) if cfg.max_seq_len else text.max_position_embeddings)


def _meta_shapes(conf) -> dict[str, tuple]:
    """{state-dict key: shape} of the transformers model `conf` describes, built on the meta device
    (names and shapes only: free at any size). Non-persistent buffers (RoPE) are not in it."""
    import torch

    conf._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = _transformers().AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
    return {k: tuple(v.shape) for k, v in hf.state_dict().items()}


class _CacheView:
    """What transformers' attention calls on a Cache (update(k, v, layer_idx, ...) -> all k, v),
    writing into the generator's KVCache at position `pos`."""

    def __init__(self, cache, pos: int):
        self.cache, self.pos, self.calls = cache, pos, 0

    def update(self, k, v, layer_idx, *args, **kwargs):
        self.calls += 1
        return self.cache.layer(layer_idx).update(k, v, self.pos)


def refuse_non_linear(model: nn.Module) -> None:
    """Projections the planner cannot see (fused MoE experts hold raw 3-D weight Parameters, not
    nn.Linear): refused, because they would silently stay in high precision under an FP8 recipe."""
    for name, mod in model.named_modules():
        own = [n for n, p in mod.named_parameters(recurse=False) if p.dim() >= 3]
        if own and not isinstance(mod, (nn.Linear, nn.Embedding)):
            raise BadInput(f"model=hf: module {name} ({type(mod).__name__}) holds projection weights that are not "
                           f"nn.Linear (fused experts?); valid: dense causal LMs whose projections are nn.Linear")


SPLIT_KV = "fp8bench_split_kv"  # the transformers attention implementation name of split_kv


def _split_kv_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """generator kernel split_kv on an HF model: the built-in flash-decoding emulation
    (bench.models.decoder.split_kv_attention, chunks of `module.kv_chunk` keys), registered with
    transformers' AttentionInterface. Causal by position: queries sit at the last T of the L key
    positions (prefill: T = L; decode with the KV cache: T = 1)."""
    from bench.models.decoder import split_kv_attention
    from bench.models.splitkv import flash_splits
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    d = query.shape[-1]
    if scaling is not None and abs(scaling - d ** -0.5) > 1e-12:
        raise ValueError(f"split_kv assumes the 1/sqrt(head_dim) softmax scale; this model uses {scaling}")
    T, L = query.shape[2], key.shape[2]
    sms = getattr(module, "kv_sms", 0)  # batch_invariant=false: FlashAttention's split count
    splits = flash_splits(query.shape[0], query.shape[1], T, L, module.kv_chunk, sms) if sms else None
    out = split_kv_attention(query, key.to(query.dtype), value.to(query.dtype), L - T, module.kv_chunk, splits)
    return out.transpose(1, 2).contiguous(), None


_KERNEL_NORMS: dict[type, type] = {}


def _kernel_norm_class(cls: type) -> type:
    """`cls` (a transformers RMSNorm: fp32 reduction, `variance_epsilon`) with the generator kernel
    switch norm_in_compute_dtype (bench/generation/kernels.py): `reduce_dtype` None runs the
    transformers forward unchanged; a dtype runs `norm_kernel`'s rounding points in it
    (bench/models/norms.py: vLLM's layernorm.py forward_native, layernorm_kernels.cu or
    cpu/layernorm.cpp). The residual add stays the transformers decoder layer's own (in the
    residual stream's dtype, cd under weights_in_compute_dtype), so the norm reads the rounded sum:
    vllm_cuda's fused rounding points; vllm_native's fused variant (normalizing the unrounded sum)
    is the built-in decoder's only. A subclass swapped onto the instance keeps its Parameter and
    state_dict key."""
    if cls not in _KERNEL_NORMS:
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.reduce_dtype is None:
                return cls.forward(self, x)
            return engine_rms_norm(x, self.weight, self.variance_epsilon, self.reduce_dtype, self.norm_kernel)[0]

        _KERNEL_NORMS[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__})
    return _KERNEL_NORMS[cls]


class HFCausalLM(nn.Module):
    """A transformers causal LM with the built-in Transformer's interface (see the module docstring)."""

    def __init__(self, cfg, hf_model):
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "hf", hf_model)  # not a submodule: the names are the adapter's
        inner = hf_model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.lm_head = inner.rotary_emb, hf_model.lm_head
        refuse_non_linear(self)
        # Generator kernel switches (DESIGN §11) that install_kernels sets by attribute: every
        # RMSNorm (incl. Qwen3's q/k norms) gets `reduce_dtype`, the adapter `rope_dtype` (the
        # cos/sin tables the decoder layers rotate q and k with). split_kv is not applied here.
        for mod in hf_model.modules():
            if type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon"):
                mod.__class__ = _kernel_norm_class(type(mod))
                mod.reduce_dtype, mod.norm_kernel = None, "vllm_native"
        self.rope_dtype: torch.dtype | None = None
        self.kv_chunk = 0  # > 0 (split_kv): attention through _split_kv_forward, chunks of this many keys
        self.kv_sms = 0    # > 0 (batch_invariant=false): FlashAttention's split count for that many SMs

    @classmethod
    def build(cls, cfg, load_weights: bool = True) -> "HFCausalLM":
        tf = _transformers()
        if cfg.path and load_weights:  # fp32 master weights, whatever dtype the checkpoint stores
            hf = tf.AutoModelForCausalLM.from_pretrained(str(_check_path(cfg.path)), local_files_only=True,
                                                         dtype=torch.float32, attn_implementation="sdpa")
        else:
            conf = path_config(cfg.path) if cfg.path else arch_config(cfg)
            conf._attn_implementation = "sdpa"
            hf = tf.AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
        return cls(cfg, hf)

    def reset_parameters(self) -> None:
        """Back to the starting weights (the warm-up starts here): a fresh random init from the
        global RNG for model.arch, the checkpoint's weights again for model.path."""
        with torch.no_grad():
            if self.cfg.path:
                fresh = HFCausalLM.build(self.cfg)
                self.load_state_dict(fresh.state_dict())
                return
            for mod in self.hf.modules():
                for n, p in mod.named_parameters(recurse=False):
                    if isinstance(mod, (nn.Linear, nn.Embedding)) and n == "weight":
                        nn.init.normal_(p, 0.0, self.cfg.init_std)
                    elif n == "bias":
                        p.zero_()
                    else:  # norm gains
                        p.fill_(1.0)

    @torch.no_grad()
    def recompute_buffers(self, device) -> None:
        """RoPE inverse frequencies, computed on CPU as at construction (to_empty left garbage)."""
        fresh = type(self.rotary)(self.hf.config)
        for name, buf in fresh.named_buffers():
            setattr(self.rotary, name, buf.to(device))

    def forward(self, idx: torch.Tensor, cache=None, pos: int = 0, sites: dict | None = None) -> torch.Tensor:
        B, T = idx.shape
        if pos + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        x = self.embed(idx)
        if sites is not None:
            sites["embed"] = x
        position_ids = torch.arange(pos, pos + T, device=idx.device)[None].expand(B, T)
        rope = self.rotary(x, position_ids)
        if self.rope_dtype is not None:  # rope_in_compute_dtype: rotate q and k with bf16/fp16 tables
            rope = tuple(t.to(self.rope_dtype) for t in rope)
        mask = None  # causal SDPA (or, for one decoded token, attention to every cached position)
        if cache is not None and pos > 0 and T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=idx.device).tril(pos)[None, None]
        view = None if cache is None else _CacheView(cache, pos)
        self._select_attention()
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, sites, attention_mask=mask, position_ids=position_ids, cache=view,
                            position_embeddings=rope)
        if view is not None and view.calls != len(self.layers):
            # A transformers version whose layers take the cache under another keyword would
            # silently decode without it: refuse instead (tested with transformers 5.24).
            raise RuntimeError(f"transformers {_transformers().__version__}: decoder layers ignored the KV cache; "
                               f"valid: transformers >= 5.24 (layers take `cache=`)")
        h = self.norm(x)
        logits = lm_head_logits(self.lm_head, h, getattr(self, "lm_head_fp32", False))  # as the built-in model
        if sites is not None:
            sites["norm"], sites["logits"] = h, logits
        return logits

    def _select_attention(self) -> None:
        """sdpa, or the split_kv emulation when install_kernels set `kv_chunk` (generator only)."""
        want = SPLIT_KV if self.kv_chunk else "sdpa"
        if self.hf.config._attn_implementation != want:
            if want == SPLIT_KV:
                _transformers().AttentionInterface.register(SPLIT_KV, _split_kv_forward)
            self.hf.config._attn_implementation = want
        for layer in self.layers:
            layer.self_attn.kv_chunk, layer.self_attn.kv_sms = self.kv_chunk, getattr(self, "kv_sms", 0)

    @staticmethod
    def _layer(i: int, layer, x, sites: dict | None, **kw):
        """One decoder layer; with `sites`, the attribution sites of DESIGN §11. A transformers
        Llama/Qwen decoder layer adds the attention output to the residual stream and feeds that sum
        to `post_attention_layernorm`: its input is `layers.<i>.attn`, the layer's output
        `layers.<i>.mlp` (the same two points as the built-in Block)."""
        if sites is None:
            return layer(x, **kw)
        hook = layer.post_attention_layernorm.register_forward_pre_hook(
            lambda mod, args: sites.__setitem__(f"layers.{i}.attn", args[0]))
        try:
            out = layer(x, **kw)
        finally:
            hook.remove()
        sites[f"layers.{i}.mlp"] = out
        return out
