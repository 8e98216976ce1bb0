"""Engine: prompts in, tokens out, over a compiled paged model.

One step = schedule -> run -> postprocess. Scheduling admits waiting requests
whose whole budget (prompt + max_new_tokens) fits the free blocks, runs their
prompts as one ragged prefill step, then decodes every running request in one
batched step; a finished request frees its blocks at once and the next waiting
request is admitted at the following step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pagedc.manifest import Manifest
from pagedc.runtime.block_manager import PagedKVCacheManager
from pagedc.runtime.ort_session import OrtPagedSession, SessionOptions
from pagedc.runtime.sampling import SamplingParams, sample


@dataclass
class _Request:
    index: int
    prompt: list[int]
    max_new_tokens: int
    rng: np.random.Generator
    output: list[int] = field(default_factory=list)
    is_finished: bool = False


@dataclass
class PhaseTimes:
    """Wall time of one kind of step (feeds, run, sampling) and of the session.run inside it."""

    num_steps: int = 0
    num_tokens: int = 0     # tokens sampled
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


class Engine:
    def __init__(self, manifest: Manifest, directory: str | Path, options: SessionOptions = SessionOptions()):
        if manifest.backend != "onnxruntime":
            raise ValueError(f"this engine runs ONNX Runtime artifacts; the manifest is for {manifest.backend}")
        self.manifest = manifest
        self.session = OrtPagedSession(manifest, directory, options)
        self.manager = PagedKVCacheManager.from_manifest(manifest)
        self.times = StepTimes()

    @classmethod
    def from_manifest(cls, path: str | Path, options: SessionOptions = SessionOptions()) -> "Engine":
        """`path` is a `pagedc compile` output directory or its manifest.json."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        return cls(Manifest.read(path), directory, options)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 16,
                 sampling: SamplingParams = SamplingParams(), stop_token_ids: Sequence[int] = ()) -> list[list[int]]:
        outputs: list[list[int]] = [[] for _ in prompts]
        for index, token in self.stream(prompts, max_new_tokens, sampling, stop_token_ids):
            outputs[index].append(token)
        return outputs

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 16,
               sampling: SamplingParams = SamplingParams(), stop_token_ids: Sequence[int] = ()) -> Iterator[tuple[int, int]]:
        """Yield (prompt index, token id) as tokens are sampled."""
        requests = [self._request(i, p, max_new_tokens, sampling) for i, p in enumerate(prompts)]
        waiting, running = deque(requests), []
        stop = set(stop_token_ids)
        try:
            while waiting or running:
                admitted = self._admit(waiting, running)
                batches = [(running, False)] if running else []
                batches += [(admitted, True)] if admitted else []
                for batch, is_prefill in batches:
                    for request, token in zip(batch, self._step(batch, is_prefill, sampling)):
                        self._record(request, token, stop)
                        yield request.index, token
                running = [r for r in running + admitted if not r.is_finished]
        finally:  # a caller that stops iterating early must not leak blocks
            for request in requests:
                if request.index in self.manager:
                    self.manager.free(request.index)

    # -- schedule --------------------------------------------------------------------
    def _request(self, index: int, prompt: Sequence[int], max_new_tokens: int, sampling: SamplingParams) -> _Request:
        if not prompt:
            raise ValueError(f"prompt {index} is empty")
        vocab = self.manifest.vocab_size
        bad = [t for t in prompt if not 0 <= t < (vocab or 2**63)]
        if bad:
            raise ValueError(f"prompt {index} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        needed = self._blocks_for(len(prompt) + max_new_tokens)
        usable = self.manifest.num_blocks - 1
        if needed > usable:
            raise ValueError(f"prompt {index} needs {needed} blocks ({len(prompt)} prompt + {max_new_tokens} new tokens, "
                             f"{self.manifest.block_size} per block), the pool has {usable} usable blocks; "
                             "compile with a larger --kv-memory or --num-blocks")
        seed = sampling.seed if sampling.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
        return _Request(index, list(prompt), max_new_tokens, np.random.default_rng([seed, index]))

    def _blocks_for(self, num_tokens: int) -> int:
        per_token_block = 2 if self.manifest.layout == "combined" else 1
        return -(-num_tokens // self.manifest.block_size) * per_token_block

    def _admit(self, waiting: deque, running: list[_Request]) -> list[_Request]:
        """Admit waiting requests, oldest first, while their whole budget fits the unreserved blocks."""
        reserved = sum(self._blocks_for(len(r.prompt) + r.max_new_tokens) - self._blocks_owned(r) for r in running)
        admitted = []
        while waiting:
            need = self._blocks_for(len(waiting[0].prompt) + waiting[0].max_new_tokens)
            if need > self.manager.num_free_blocks - reserved:
                break
            request = waiting.popleft()
            self.manager.add(request.index)
            reserved += need
            admitted.append(request)
        return admitted

    def _blocks_owned(self, request: _Request) -> int:
        key_blocks, value_blocks = self.manager.block_ids(request.index)
        return len(key_blocks) + len(value_blocks or [])

    # -- run + postprocess -------------------------------------------------------------
    def _step(self, batch: list[_Request], is_prefill: bool, sampling: SamplingParams) -> list[int]:
        start = time.perf_counter()
        tokens = [r.prompt if is_prefill else [r.output[-1]] for r in batch]
        for request, new in zip(batch, tokens):
            self.manager.append(request.index, len(new))
        feeds = self.manager.step_inputs([r.index for r in batch])
        input_ids = np.zeros(feeds["position_ids"].shape, np.int64)   # [B, S], padding = token 0
        for b, new in enumerate(tokens):
            input_ids[b, : len(new)] = new
        feeds["input_ids"] = input_ids
        run_start = time.perf_counter()
        logits = self.session.run(feeds)                               # [B, S, V]
        run_end = time.perf_counter()
        sampled = [sample(logits[b, len(new) - 1], sampling, r.rng) for b, (r, new) in enumerate(zip(batch, tokens))]
        phase = self.times.prefill if is_prefill else self.times.decode
        phase.num_steps += 1
        phase.num_tokens += len(batch)
        phase.run_s += run_end - run_start
        phase.step_s += time.perf_counter() - start
        return sampled

    def _record(self, request: _Request, token: int, stop: set[int]) -> None:
        request.output.append(token)
        if token in stop or len(request.output) >= request.max_new_tokens:
            request.is_finished = True
            self.manager.free(request.index)
