"""Seeded random weights for the reference decoders.

Keys follow Hugging Face Llama parameter names. Linear weights are stored in
MatMul layout `[in_features, out_features]` (transposed from torch's
`[out, in]`), the way every ONNX exporter stores them, so `x @ w` is the layer.

Scaling keeps every activation O(1) so fp32 comparisons can use absolute
tolerances and fp16 does not overflow:
- embeddings ~ N(0, 1): the residual stream starts at unit RMS;
- linear weights ~ N(0, 1/fan_in): a unit-RMS input gives a unit-RMS output;
- norm weights ~ 1 + N(0, 0.1²): not all ones, so a builder that drops the
  norm weight is caught;
- lm_head ~ N(0, 1/hidden_size) after the final RMSNorm: logits ~ N(0, 1).
"""

from __future__ import annotations

import numpy as np

from pagedc.testing.config import DecoderConfig


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}"


def linear_shapes(config: DecoderConfig) -> dict[str, tuple[int, int]]:
    """Per-layer linear weights, `[in, out]`."""
    d, q, kv, f = (
        config.hidden_size,
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
        config.intermediate_size,
    )
    return {
        "self_attn.q_proj": (d, q),
        "self_attn.k_proj": (d, kv),
        "self_attn.v_proj": (d, kv),
        "self_attn.o_proj": (q, d),
        "mlp.gate_proj": (d, f),
        "mlp.up_proj": (d, f),
        "mlp.down_proj": (f, d),
    }


def make_weights(config: DecoderConfig) -> dict[str, np.ndarray]:
    """All parameters of `config`, deterministic for `config.seed`, in `config.dtype`."""
    rng = np.random.default_rng(config.seed)
    d = config.hidden_size
    weights: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.standard_normal((config.vocab_size, d)),  # [V, D]
    }
    for i in range(config.num_layers):
        p = layer_prefix(i)
        weights[f"{p}.input_layernorm.weight"] = _norm_weight(rng, d)
        for name, (fan_in, fan_out) in linear_shapes(config).items():
            weights[f"{p}.{name}.weight"] = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        weights[f"{p}.post_attention_layernorm.weight"] = _norm_weight(rng, d)
    weights["model.norm.weight"] = _norm_weight(rng, d)
    weights["lm_head.weight"] = rng.standard_normal((d, config.vocab_size)) / np.sqrt(d)  # [D, V]
    return {name: w.astype(config.np_dtype) for name, w in weights.items()}


def _norm_weight(rng: np.random.Generator, size: int) -> np.ndarray:
    return 1.0 + 0.1 * rng.standard_normal(size)
