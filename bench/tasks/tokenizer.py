"""Character tokenizer shared by every task: 3 specials + printable ASCII, padded to 128 ids.

One vocabulary for all tasks keeps checkpoints interchangeable between tasks, and 128 rows make
lm_head's out_features a multiple of 16 and 32, so even lm_head can run FP8 GEMMs (and MX blocks).
"""
from __future__ import annotations

import string

import torch

PAD, BOS, EOS = 0, 1, 2
_CHARS = string.printable[:95]  # digits, letters, punctuation, space (no tabs/newlines)
_IDS = {c: i + 3 for i, c in enumerate(_CHARS)}
VOCAB_SIZE = 128


def encode(text: str) -> list[int]:
    try:
        return [_IDS[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is outside the tokenizer's printable ASCII") from None


def decode(ids) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= 3 and i - 3 < len(_CHARS):
            out.append(_CHARS[i - 3])
    return "".join(out)


def clean(text: str) -> str:
    """Map text onto the vocabulary: newlines/tabs become spaces, other characters are dropped."""
    text = text.replace("\n", " ").replace("\t", " ")
    return "".join(c for c in text if c in _IDS)


class CharTokenizer:
    """The character tokenizer as an object, the interface every task codes against (an HF
    tokenizer is wrapped to the same interface in bench/tasks/hf_tokenizer.py). `exact_width`:
    token counts are character counts, so a task can state its sequence widths exactly."""
    pad_id, bos_id, eos_id, vocab_size = PAD, BOS, EOS, VOCAB_SIZE
    exact_width = True

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def encode_prompt(self, text: str) -> list[int]:
        return [BOS] + encode(text)

    def decode(self, ids) -> str:
        return decode(ids)

    def __repr__(self) -> str:  # stable: the warm-up cache key includes the task's tokenizer
        return "char"


CHAR = CharTokenizer()
