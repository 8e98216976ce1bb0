"""Token sampling: greedy, or temperature / top-k / top-p under a seed."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from pagedc.errors import RequestError
from pagedc.runtime.checks import require_int


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0     # 0: greedy (argmax)
    top_k: int = 0               # 0: no top-k cut
    top_p: float = 1.0           # 1: no nucleus cut
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
                raise RequestError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        require_int("top_k", self.top_k, minimum=0)
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            require_int("seed", self.seed, minimum=0)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from logits [V]."""
    if params.is_greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    if params.top_k:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(len(probs), p=probs))
