"""The one thread that drives `Engine.step()`, and the per-request queues that bring tokens back.

    HTTP handler (event loop)                    engine thread
    submit(prompt, ..., queue) ── add_request ──▶ step() -> [(request_id, token)]
    await queue.get() ◀── loop.call_soon_threadsafe(put) ── one call per step: [Output, ...]
    abort(request_id)      ── engine.abort ────▶ freed at the next step

No engine work runs on the event loop: handlers only call the thread-safe
`add_request` / `abort`. A handler registers its queue under `_lock` around
`add_request`, and the thread looks queues up under the same lock, so no
token can arrive before its queue is known. When the thread stops (shutdown)
or a step fails, every open request gets a last Output with finish_reason
"abort" or the error (its HTTP request fails with 500; the server goes on).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pagedc.runtime import Engine, SamplingParams
from pagedc.serve.metrics import ServerMetrics

log = logging.getLogger(__name__)
IDLE_WAIT_S = 1.0           # how long an idle thread sleeps before checking for stop again


@dataclass(frozen=True)
class Output:
    choice: int                    # the HTTP request's choice index this sample fills
    token: int | None              # None: no token, only a finish (abort, error)
    finish_reason: str | None      # "stop" (a stop token), "length", "abort", or None while running
    error: str | None = None


@dataclass
class _Sample:
    queue: asyncio.Queue
    choice: int
    arrival: float
    last_token: float | None = None


class EngineUnavailable(Exception):
    """The engine thread stopped (shutdown) or failed; the message says which."""


class EngineThread:
    def __init__(self, engine: Engine, metrics: ServerMetrics):
        self.engine, self.metrics = engine, metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._samples: dict[int, _Sample] = {}         # engine request id -> where its tokens go
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pagedc-engine", daemon=True)
        self._num_preemptions = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step; open requests end with finish_reason "abort"."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._close_all(None)

    def abort_all(self) -> None:
        """End every open request now (finish_reason "abort"); the thread goes on (shutdown grace is over)."""
        self._close_all(None)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    # -- called from the event loop -------------------------------------------------------
    def submit(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingParams, stop_token_ids: frozenset[int],
               n: int, queue: asyncio.Queue, first_choice: int) -> list[int]:
        """Queue one prompt with n samples; their Outputs go to `queue` as choices first_choice ..
        first_choice + n - 1. Returns the samples' engine request ids. Raises ValueError for a bad request."""
        if not self.is_alive:
            raise EngineUnavailable("the server is shutting down")
        now = time.perf_counter()
        with self._lock:
            request_id = self.engine.add_request(prompt, max_tokens, sampling, stop_token_ids, n=n)
            ids = list(range(request_id, request_id + n))
            for k, sample_id in enumerate(ids):
                self._samples[sample_id] = _Sample(queue, first_choice + k, now)
        self.metrics.prompt_tokens.inc(len(prompt))
        self._wake.set()
        return ids

    def abort(self, request_ids: Sequence[int], reason: str = "abort") -> None:
        """Drop samples (a client went away: "abort"; a stop string matched: "stop"); their blocks return
        at the next step."""
        with self._lock:
            for request_id in request_ids:
                if self._samples.pop(request_id, None) is not None:
                    self.engine.abort(request_id)
                    self.metrics.finish(reason)
        self._wake.set()

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            if not self.engine.has_unfinished():
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                self._observe_engine()
                continue
            try:
                events = self.engine.step()
            except Exception as err:  # a backend failure or a bug: the open requests fail, the server goes on
                log.exception("engine step failed; failing the %d open request sample(s)", len(self._samples))
                self._close_all(f"the engine failed: {type(err).__name__}: {err}")
                continue
            self._dispatch(events)
            self._observe_engine()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        now = time.perf_counter()
        batches: dict[asyncio.Queue, list[Output]] = {}
        with self._lock:
            for request_id, token in events:
                sample = self._samples.get(request_id)
                if sample is None:
                    continue                               # aborted while its step ran
                request = self.engine.requests[request_id]
                reason = None
                if request.is_done:
                    reason = "stop" if token in request.stop_token_ids else "length"
                    del self._samples[request_id]
                    self.metrics.finish(reason)
                    self.metrics.e2e_latency.observe(now - sample.arrival)
                self._observe_token(sample, now)
                batches.setdefault(sample.queue, []).append(Output(sample.choice, token, reason))
        self.metrics.step_batch_size.observe(len(events))
        self.metrics.generation_tokens.inc(len(events))
        self._forget_done()
        self._send(batches)

    def _observe_token(self, sample: _Sample, now: float) -> None:
        if sample.last_token is None:
            self.metrics.ttft.observe(now - sample.arrival)
        else:
            self.metrics.itl.observe(now - sample.last_token)
        sample.last_token = now

    def _forget_done(self) -> None:
        # NOTE: the engine keeps every request it ever saw in `requests` (for metrics()); a server runs for
        # days, so finished and aborted ones are dropped here, on the thread that steps the engine.
        for request_id in [r for r, request in self.engine.requests.items() if request.is_done]:
            del self.engine.requests[request_id]

    def _observe_engine(self) -> None:
        scheduler, stats = self.engine.scheduler, self.engine.manager.stats()
        self.metrics.running.set(len(scheduler.running))
        self.metrics.waiting.set(len(scheduler.waiting))
        self.metrics.kv_usage.set(stats["kv_usage"])
        self.metrics.prefix_hit_rate.set(stats["prefix_hit_rate"])
        self.metrics.preemptions.inc(scheduler.num_preemptions - self._num_preemptions)
        self._num_preemptions = scheduler.num_preemptions

    def _close_all(self, error: str | None) -> None:
        """Every open sample gets a last Output: finish_reason "abort" (shutdown) or the engine's error."""
        with self._lock:
            samples, self._samples = self._samples, {}
            for request_id in samples:
                self.engine.abort(request_id)
        batches: dict[asyncio.Queue, list[Output]] = {}
        for sample in samples.values():
            batches.setdefault(sample.queue, []).append(Output(sample.choice, None, "abort", error))
        self._send(batches)

    def _send(self, batches: dict[asyncio.Queue, list[Output]]) -> None:
        for queue, outputs in batches.items():
            try:
                self._loop.call_soon_threadsafe(queue.put_nowait, outputs)
            except RuntimeError:       # the loop is closed: nobody is listening any more
                return
