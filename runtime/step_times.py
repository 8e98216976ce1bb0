"""Wall time the engine spends per kind of step, and how much of it is the session run (engine overhead)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PhaseTimes:
    """Wall time of one kind of session run (feeds, run, sampling) and of the session.run inside it."""

    num_steps: int = 0
    num_tokens: int = 0     # tokens computed
    step_s: float = 0.0
    run_s: float = 0.0

    @property
    def overhead_share(self) -> float:
        """Share of step time spent outside session.run (the engine's own Python work)."""
        return (self.step_s - self.run_s) / self.step_s if self.step_s else 0.0


@dataclass
class StepTimes:
    prefill: PhaseTimes = field(default_factory=PhaseTimes)
    decode: PhaseTimes = field(default_factory=PhaseTimes)

    @property
    def num_steps(self) -> int:
        return self.prefill.num_steps + self.decode.num_steps

    @property
    def step_s(self) -> float:
        return self.prefill.step_s + self.decode.step_s

    @property
    def run_s(self) -> float:
        return self.prefill.run_s + self.decode.run_s

    @property
    def overhead_share(self) -> float:
        return (self.step_s - self.run_s) / self.step_s if self.step_s else 0.0
