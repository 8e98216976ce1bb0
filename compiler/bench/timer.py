"""Timing of several sides in alternating rounds: warm-up, repeats, avg/min/max/median per step.

    stats = measure({"paged": run_paged, "dense": run_dense}, repeats=10, warmup=2)
    stats["paged"].median_ms, stats["dense"].median_ms

A side is `run(i)`: step i of a round of `steps_per_round` steps, each timed
alone. One round runs every side's steps, side after side in the order
given, so a load change on the machine (another process, frequency scaling)
hits every side alike and the ratio between sides stays meaningful even when
the absolute figures drift. `prepare[name]`, when given, runs before each of
that side's rounds and is not timed (e.g. rewinding a cache to the context).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Step = Callable[[int], object]   # run(i): step i of a round


@dataclass(frozen=True)
class PhaseStats:
    """Milliseconds per step of one side in one phase, over every timed step."""

    num_steps: int
    avg_ms: float
    min_ms: float
    max_ms: float
    median_ms: float
    tokens_per_step: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step * 1e3 / self.avg_ms if self.avg_ms else 0.0

    @classmethod
    def of(cls, step_ms: list[float], tokens_per_step: int = 1) -> "PhaseStats":
        return cls(len(step_ms), statistics.fmean(step_ms), min(step_ms), max(step_ms), statistics.median(step_ms),
                   tokens_per_step)

    def to_dict(self) -> dict:
        return {"num_steps": self.num_steps, "avg_ms": self.avg_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "median_ms": self.median_ms, "tokens_per_step": self.tokens_per_step,
                "tokens_per_s": self.tokens_per_s}


def measure(sides: Mapping[str, Step], *, repeats: int, warmup: int = 1, steps_per_round: int = 1,
            prepare: Mapping[str, Callable[[], None]] | None = None,
            tokens_per_step: Mapping[str, int] | None = None,
            progress: Callable[[str], None] = lambda _: None) -> dict[str, PhaseStats]:
    """`warmup` untimed rounds, then `repeats` timed ones; per side, stats over every timed step."""
    if repeats < 1 or steps_per_round < 1 or warmup < 0:
        raise ValueError(f"repeats and steps_per_round must be >= 1 and warmup >= 0, "
                         f"got {repeats}, {steps_per_round}, {warmup}")
    prepare = prepare or {}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(warmup + repeats):
        is_timed = round_index >= warmup
        progress(f"round {round_index + 1 - warmup}/{repeats}" if is_timed else f"warm-up {round_index + 1}/{warmup}")
        for name, run in sides.items():
            if name in prepare:
                prepare[name]()
            for step in range(steps_per_round):
                start = time.perf_counter()
                run(step)
                if is_timed:
                    times[name].append((time.perf_counter() - start) * 1e3)
    tokens = tokens_per_step or {}
    return {name: PhaseStats.of(ms, tokens.get(name, 1)) for name, ms in times.items()}
