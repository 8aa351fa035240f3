"""A Hugging Face tokenizer behind the tasks' tokenizer interface (bench.tasks.tokenizer.CharTokenizer).

  encode_prompt(text)  [bos] + tokens of the prompt; with chat_template=true the prompt is the
                       user turn of the tokenizer's chat template, with the generation prompt
                       appended (the assistant's turn starts where the completion does)
  encode(text)         tokens of an answer, no special tokens (it continues the prompt)
  decode(ids)          text up to the first EOS, special tokens dropped
pad_id: the tokenizer's pad token, else its EOS (many causal LMs define no pad token). Pads only
ever sit left of a prompt or right of an EOS, and loss masks come from lengths, never from
comparing ids with pad_id, so pad == eos is harmless.
"""
from __future__ import annotations

import torch

from bench.core.errors import BadInput


class HFTokenizer:
    exact_width = False  # BPE token counts vary with the text: tasks measure their widths

    def __init__(self, tok, chat_template: bool = False):
        if tok.eos_token_id is None:
            raise BadInput("model.path tokenizer has no EOS token; valid: a tokenizer with eos_token set")
        if chat_template and not getattr(tok, "chat_template", None):
            raise BadInput("model.chat_template=true but the tokenizer has no chat template; valid: false, "
                           "or a checkpoint whose tokenizer_config.json holds one")
        self.tok, self.chat = tok, chat_template
        self.eos_id = int(tok.eos_token_id)
        self.bos_id = tok.bos_token_id
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.vocab_size = len(tok)

    def __repr__(self) -> str:  # stable: the warm-up cache key includes the task's tokenizer
        return f"hf:{self.tok.name_or_path}:{self.vocab_size}:chat={self.chat}"

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
            return self.encode(text)  # the template writes its own special tokens
        return ([] if self.bos_id is None else [int(self.bos_id)]) + self.encode(text)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tok.decode(ids, skip_special_tokens=True)
