"""model=hf model.path=DIR checked before anything is built (the validation pass calls these
through bench.models.resolve / load_tokenizer): each problem a new user's own checkpoint can have is
one BadInput line naming the directory, what is wrong and what would be valid, before a run dir,
lock or any compute exists.

  check_config(path, conf)     a causal LM architecture the adapter supports (ARCHS), a RoPE type
                               transformers knows
  check_weights(path, conf)    weights present and loadable: every safetensors header (and the
                               sharded index) parsed without reading a tensor, each tensor's byte
                               range inside its file, a float dtype, and every parameter the model
                               needs present with its shape (a meta-device build: free at any size)
  check_vocab(path, n, vocab)  the embedding covers every id the tokenizer can emit
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from bench.core.errors import BadInput

# Bytes per element of the safetensors dtypes a checkpoint may hold (the format's own table).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_WEIGHTS = ("F32", "F16", "BF16", "F64")  # what from_pretrained loads into fp32 master weights
MAX_HEADER = 100_000_000  # the safetensors reader's own limit on the JSON header


def check_config(path: str, conf, archs: tuple[str, ...]) -> None:
    text = getattr(conf, "text_config", None) or conf
    kind = getattr(conf, "model_type", None)
    names = ", ".join(getattr(conf, "architectures", None) or []) or "no architectures listed"
    if kind not in archs:
        raise BadInput(f"model.path={path!r} holds a {kind!r} model ({names}), not a causal LM this adapter "
                       f"supports; valid: model_type {', '.join(archs)} (dense decoder-only causal LMs)")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        raise BadInput(f"model.path={path!r}: config.json has rope_type {rope_type!r}, which transformers does not "
                       f"know; valid: default, {', '.join(ROPE_INIT_FUNCTIONS)}")


def read_header(f: Path) -> dict:
    """A safetensors file's header {name: {dtype, shape, data_offsets}}, checked against the file's
    size (a truncated download fails here, not halfway through loading)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise BadInput(f"{f} is not a safetensors file (header length {n}, file {size} bytes); valid: "
                           f"a complete safetensors file (re-save with save_pretrained or re-download)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise BadInput(f"{f} has a corrupt safetensors header (not a JSON object); valid: a complete "
                       f"safetensors file (re-save with save_pretrained or re-download)")
    header.pop("__metadata__", None)
    body = size - 8 - n
    for name, t in header.items():
        dtype, shape, (lo, hi) = t.get("dtype"), t.get("shape", []), t.get("data_offsets", (0, -1))
        numel = 1
        for d in shape:
            numel *= d
        if dtype not in DTYPE_BYTES or hi - lo != numel * DTYPE_BYTES[dtype] or hi > body or lo < 0:
            raise BadInput(f"{f}: tensor {name} ({dtype} {shape}, bytes {lo}..{hi}) does not fit its "
                           f"{body}-byte data section (truncated or corrupt); valid: a complete safetensors file")
    return header


def checkpoint_tensors(path: str) -> dict[str, tuple[str, tuple]] | None:
    """{name: (dtype, shape)} of every tensor in DIR's safetensors checkpoint (single file or sharded
    index); None for a pytorch_model.bin checkpoint (not inspected: reading it means unpickling it)."""
    p = Path(path)
    index, single = p / "model.safetensors.index.json", p / "model.safetensors"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{index} is not a safetensors index (no weight_map); valid: the index "
                           f"save_pretrained writes next to its shards") from None
        missing = [f for f in files if not (p / f).is_file()]
        if missing:
            raise BadInput(f"model.path={path!r}: the index names shard {missing[0]}, which is missing "
                           f"({len(missing)} of {len(files)} shards); valid: every shard the index lists")
    elif single.is_file():
        files = [single.name]
    elif any(p.glob("pytorch_model*.bin")):
        return None
    else:
        raise BadInput(f"model.path={path!r} holds no weights (no model.safetensors, model.safetensors.index.json "
                       f"or pytorch_model.bin); valid: a directory written by save_pretrained, weights included")
    out = {}
    for f in files:
        for name, t in read_header(p / f).items():
            out[name] = (t["dtype"], tuple(t["shape"]))
    return out


def check_weights(path: str, conf, expected: dict[str, tuple]) -> None:
    """The checkpoint holds every parameter of `expected` ({name: shape}, from the meta model) with
    that shape, in a float dtype."""
    have = checkpoint_tensors(path)
    if have is None:
        return
    if getattr(conf, "tie_word_embeddings", False):
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = [k for k in expected if k not in have]
    if missing:
        raise BadInput(f"model.path={path!r}: the weights lack {len(missing)} of the {len(expected)} tensors "
                       f"config.json needs ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                       f"valid: weights saved from this config")
    for k, shape in expected.items():
        dtype, got = have[k]
        if got != tuple(shape):
            raise BadInput(f"model.path={path!r}: {k} is {list(got)} in the weights, {list(shape)} by config.json; "
                           f"valid: the config.json the weights were saved with")
        if dtype not in FLOAT_WEIGHTS:
            raise BadInput(f"model.path={path!r}: {k} is stored as {dtype}; valid: weights in "
                           f"{', '.join(FLOAT_WEIGHTS)} (quantized checkpoints are not loaded)")


def check_vocab(path: str, n_tokens: int, vocab_size: int) -> None:
    if n_tokens > vocab_size:
        raise BadInput(f"model.path={path!r}: the tokenizer has {n_tokens} tokens but the model's vocabulary is "
                       f"{vocab_size} (ids {vocab_size}..{n_tokens - 1} have no embedding); valid: a tokenizer "
                       f"of at most {vocab_size} tokens, i.e. the one the model was trained with")
