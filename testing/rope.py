"""Rotary embedding tables baked into the reference graphs as initializers.

Both forms use the non-interleaved ("rotate_half") convention of HF Llama:
dimension d pairs with d + Dh/2 and rotates by angle `pos * theta^(-2d/Dh)`.

- form A (HF export) Gathers rows of `[max_pos, Dh]` tables by position_ids;
  each row is `cat(cos(angles), cos(angles))` as HF's LlamaRotaryEmbedding.
- form B (GroupQueryAttention) takes the `[max_pos, Dh/2]` half tables
  (`cos_cache`, `sin_cache`) and applies them inside the op.

Angles and cos/sin are computed in float64 and rounded once to the model
dtype (HF rounds the angles to float32 first; the difference is below 1e-5 for
positions < 256 and it keeps the tables equal to the reference's rotation).
"""

from __future__ import annotations

import numpy as np

from pagedc.testing.config import DecoderConfig


def inv_freq(config: DecoderConfig) -> np.ndarray:
    """`[Dh/2]` float64 rotation frequencies."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim
    return 1.0 / (config.rope_theta**exponents)


def half_tables(config: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """`cos_cache, sin_cache` `[max_pos, Dh/2]` in the model dtype (GQA inputs 7 and 8)."""
    positions = np.arange(config.max_position_embeddings, dtype=np.float64)
    angles = np.outer(positions, inv_freq(config))  # [max_pos, Dh/2] float64
    return np.cos(angles).astype(config.np_dtype), np.sin(angles).astype(config.np_dtype)


def full_tables(config: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """`cos, sin` `[max_pos, Dh]` in the model dtype (HF `emb = cat(freqs, freqs)`)."""
    cos_half, sin_half = half_tables(config)
    return np.concatenate([cos_half, cos_half], axis=-1), np.concatenate([sin_half, sin_half], axis=-1)
