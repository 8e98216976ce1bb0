"""DecoderConfig: the shape of a tiny Llama-style reference decoder.

One frozen dataclass shared by the weight generator, both graph builders and
the NumPy reference, so a test states a model in one line:

    DecoderConfig(num_kv_heads=1)                  # MQA
    DecoderConfig(num_kv_heads=4)                  # MHA (num_kv_heads == num_heads)
    DecoderConfig(sliding_window=3, dtype="float16")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class DecoderConfig:
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vocab_size: int = 97
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 256
    dtype: str = "float32"  # or "float16": weights, activations and KV cache
    sliding_window: int | None = None  # key j visible to query p iff p - W < j <= p
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}")

    @classmethod
    def llama_like(cls, num_layers: int, hidden_size: int, max_position_embeddings: int = 2048,
                   vocab_size: int = 1000) -> "DecoderConfig":
        """A benchmark-sized shape: 8 query heads over 2 KV heads, head_dim = hidden/8, MLP 3x hidden."""
        return cls(num_layers=num_layers, hidden_size=hidden_size, num_heads=8, num_kv_heads=2,
                   head_dim=hidden_size // 8, intermediate_size=hidden_size * 3, vocab_size=vocab_size,
                   max_position_embeddings=max_position_embeddings)

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (1 = MHA, num_heads = MQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def scale(self) -> float:
        """Attention score scale, 1/sqrt(head_dim)."""
        return float(self.head_dim) ** -0.5
