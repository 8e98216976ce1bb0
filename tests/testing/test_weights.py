import numpy as np
import pytest

from pagedc.testing import DecoderConfig, build_decoder, make_weights, reference_forward
from pagedc.testing.session import empty_past


def test_weights_are_deterministic_for_a_seed():
    a, b = make_weights(DecoderConfig(seed=3)), make_weights(DecoderConfig(seed=3))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_weights_differ_across_seeds():
    a, b = make_weights(DecoderConfig(seed=0)), make_weights(DecoderConfig(seed=1))
    assert all(not np.array_equal(a[name], b[name]) for name in a)


def test_weight_shapes_dtypes_and_names():
    config = DecoderConfig(num_layers=3, num_kv_heads=1, dtype="float16")
    weights = make_weights(config)
    assert len(weights) == 3 + config.num_layers * 9  # embed, norm, lm_head + per layer 2 norms, 7 linears
    assert all(w.dtype == np.float16 for w in weights.values())
    assert weights["model.embed_tokens.weight"].shape == (97, 64)
    assert weights["model.layers.2.self_attn.q_proj.weight"].shape == (64, 4 * 16)  # [in, out]
    assert weights["model.layers.2.self_attn.k_proj.weight"].shape == (64, 1 * 16)
    assert weights["model.layers.0.mlp.down_proj.weight"].shape == (128, 64)
    assert weights["lm_head.weight"].shape == (64, 97)


def test_logits_are_order_one():
    config = DecoderConfig()
    ids = np.random.default_rng(0).integers(1, config.vocab_size, (2, 8))
    positions = np.broadcast_to(np.arange(8), (2, 8))
    logits, _ = reference_forward(config, make_weights(config), ids, np.ones((2, 8)), positions, empty_past(config, 2))
    assert 0.3 < logits.std() < 3.0
    assert np.abs(logits).max() < 10.0


def test_build_rejects_weights_of_another_config():
    with pytest.raises(ValueError, match="self_attn.k_proj.weight"):
        build_decoder(DecoderConfig(num_kv_heads=2), "decomposed", make_weights(DecoderConfig(num_kv_heads=1)))
    with pytest.raises(ValueError, match="float16"):
        build_decoder(DecoderConfig(dtype="float16"), "gqa", make_weights(DecoderConfig()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(dtype="bfloat16"), "dtype"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(head_dim=15), "even"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**kwargs)
