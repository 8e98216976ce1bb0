"""A generation request as the scheduler and engine see it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from pagedc.runtime.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"      # not in the cache (new, or preempted and to be recomputed)
    RUNNING = "running"      # holds blocks; prefilling (maybe in chunks) or decoding
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass
class Request:
    request_id: int
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    rng: np.random.Generator
    stop_token_ids: frozenset[int] = frozenset()
    cache_key: str = ""
    num_samples: int = 1           # n > 1: forked into n - 1 more requests after the prefill
    seed: int = 0                  # rng = default_rng(seed); sample k of an n > 1 request uses seed + k
    output: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0          # leading tokens of all_tokens whose KV is in the cache
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    num_preemptions: int = 0
    finish_reason: str | None = None   # "stop" (a stop token), "length" (max_new_tokens or max_model_len), "abort"

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def is_prefilling(self) -> bool:
        """Tokens other than the last sampled one are still to be computed."""
        return self.num_computed < len(self.all_tokens) - (1 if self.output else 0)

    @property
    def is_done(self) -> bool:
        return self.status in (Status.FINISHED, Status.ABORTED)

    def pending_tokens(self) -> list[int]:
        """Tokens whose KV is not in the cache yet (the whole prompt, a remainder, or the last sampled token)."""
        return self.all_tokens[self.num_computed :]
