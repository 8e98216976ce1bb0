"""build_decoder: one entry point for both reference forms (DESIGN.md §2, forms A and B)."""

from __future__ import annotations

import numpy as np
import onnx

from pagedc.testing.config import DecoderConfig
from pagedc.testing.decomposed import build_decomposed
from pagedc.testing.gqa import build_gqa
from pagedc.testing.weights import make_weights

FORMS = ("decomposed", "gqa", "attention", "mha")


def build_decoder(
    config: DecoderConfig, form: str, weights: dict[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """A Llama-style decoder with a dense KV cache.

    form "decomposed": form A (HF Optimum / torch.onnx export), inputs input_ids,
    attention_mask, position_ids, past_key_values.{i}.key/value.
    form "gqa": form B (onnxruntime-genai 0.18 builder), inputs input_ids,
    attention_mask, past_key_values.{i}.key/value; one GroupQueryAttention per layer.
    form "attention": form C, form A with each layer's attention as one ONNX opset-23
    `Attention` op (same inputs and outputs as form A).
    form "mha": form D, form A with each layer's attention as com.microsoft.MultiHeadAttention
    (needs num_kv_heads == num_heads).
    Both output logits and present.{i}.key/value. `weights` defaults to
    make_weights(config).
    """
    if weights is None:
        weights = make_weights(config)
    _check_weights(config, weights)
    if form == "decomposed":
        return build_decomposed(config, weights)
    if form == "gqa":
        return build_gqa(config, weights)
    if form in ("attention", "mha"):
        return build_decomposed(config, weights, core=form)
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _check_weights(config: DecoderConfig, weights: dict[str, np.ndarray]) -> None:
    expected = {name: w.shape for name, w in make_weights(config).items()}  # tiny models: cheap
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"weights are missing {len(missing)} tensors for this config, e.g. {missing[:3]}")
    for name, shape in expected.items():
        w = weights[name]
        if w.shape != shape or w.dtype != config.np_dtype:
            raise ValueError(
                f"weight {name!r}: expected {shape} {config.dtype}, found {w.shape} {w.dtype}; "
                f"build weights with make_weights(config) for the same config"
            )

