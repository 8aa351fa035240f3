import pytest
import torch

from bench.models.decoder import ModelConfig, Transformer, token_logprobs

TINY = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32)


def test_logits_have_batch_time_vocab_shape_and_fp32():
    m = Transformer(TINY)
    out = m(torch.randint(0, 128, (3, 10)))
    assert out.shape == (3, 10, 128) and out.dtype == torch.float32


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    m = Transformer(TINY)
    x = torch.randint(0, 128, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 128, (2, 5))
    a, b = m(x), m(y)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_every_linear_has_a_stable_dotted_name():
    names = [n for n, mod in Transformer(TINY).named_modules() if isinstance(mod, torch.nn.Linear)]
    assert "layers.1.mlp.up" in names and "layers.0.attn.q" in names and "lm_head" in names
    assert len(names) == 2 * 7 + 1


@pytest.mark.parametrize("field,value", [("d_model", 0), ("n_heads", -1), ("vocab_size", 0)])
def test_non_positive_sizes_are_rejected(field, value):
    cfg = ModelConfig(**{**TINY.__dict__, field: value})
    assert field in cfg.validate()


def test_qk_norm_and_tied_embeddings_build_and_run():
    cfg = ModelConfig(**{**TINY.__dict__, "qk_norm": True, "tie_embeddings": True})
    m = Transformer(cfg)
    assert m.lm_head.weight is m.embed.weight
    assert torch.isfinite(m(torch.randint(0, 128, (1, 5)))).all()


def test_token_logprobs_equal_log_softmax_gather():
    logits = torch.randn(2, 4, 128)
    t = torch.randint(0, 128, (2, 4))
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, t[..., None])[..., 0]
    assert torch.allclose(token_logprobs(logits, t, 0.7), ref)


def test_sequences_longer_than_max_seq_len_raise():
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(TINY)(torch.zeros(1, 33, dtype=torch.long))


def test_model_config_defaults_are_the_tiny_model_file():
    """ModelConfig is the model group's schema: its defaults and conf/model/tiny.yaml are one model."""
    from omegaconf import OmegaConf

    from bench.config import schema  # registers the schemas; schema.ModelConfig adds the model kind
    from helpers import compose_cfg

    assert OmegaConf.to_object(compose_cfg("pretrain", ["model=tiny"]).model) == schema.ModelConfig()


@pytest.mark.parametrize("field,value,needle", [("n_heads", 3, "not divisible by model.n_heads=3"),
                                                ("n_heads", 64, "must be even for RoPE")])
def test_impossible_head_layouts_name_the_values(field, value, needle):
    reason = ModelConfig(**{**TINY.__dict__, field: value}).validate()
    assert needle in reason and "valid:" in reason
