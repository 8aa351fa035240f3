"""Local Hugging Face checkpoint directories for the model=hf bad-input cases (tests/badinputs.py
HF list): one good tiny Qwen2 (q/k/v biases) with a character tokenizer, and one broken copy per
case, each as a new user would have it on disk. Built in code, nothing downloaded; tiny dims so the
whole set is written in well under a second."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def char_tokenizer():
    """A character-level HF tokenizer (98 tokens: 3 specials + 95 printable characters)."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *string.printable[:95]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def write_model(path: Path, arch: str = "qwen2", vocab: int = 128, seed: int = 0, tokenizer: bool = True,
                **sizes) -> Path:
    """save_pretrained of a tiny random `arch` model (random biases too, so a dropped bias shows)."""
    import torch

    from bench.config.schema import ModelConfig
    from bench.models import build_model

    dims = dict(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, max_seq_len=256) | sizes
    cfg = ModelConfig(name="hf", kind="hf", arch=arch, vocab_size=vocab, **dims)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.hf.save_pretrained(path)
    if tokenizer:
        char_tokenizer().save_pretrained(path)
    return path


def edit_config(path: Path, **changes) -> None:
    f = path / "config.json"
    conf = json.loads(f.read_text())
    conf.update(changes)
    f.write_text(json.dumps(conf))


def make_dirs(root: Path) -> dict[str, Path]:
    """{placeholder: dir} for every `{hf_*}` placeholder of the HF bad-input cases."""
    root = Path(root)
    good = write_model(root / "good")
    out = {"{hf_good}": good}

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(good, d)
        out["{hf_" + name + "}"] = d
        return d

    edit_config(copy("bert"), model_type="bert", architectures=["BertLMHeadModel"], type_vocab_size=2,
                is_decoder=True)
    write_model(root / "small_vocab", vocab=50)
    out["{hf_small_vocab}"] = root / "small_vocab"
    (copy("no_weights") / "model.safetensors").unlink()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy("no_tokenizer") if f == "tokenizer.json" else root / "no_tokenizer").joinpath(f).unlink(missing_ok=True)
    w = copy("corrupt") / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # a download cut in half
    g = copy("garbage") / "model.safetensors"
    g.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    edit_config(copy("unknown_rope"), rope_parameters={"rope_type": "warp9", "rope_theta": 10000.0})
    edit_config(copy("wrong_shape"), intermediate_size=96)  # config says 96, the weights hold 128
    odd = write_model(root / "odd_dims", d_model=72, n_heads=4, n_kv_heads=2)
    out["{hf_odd_dims}"] = odd
    return out
