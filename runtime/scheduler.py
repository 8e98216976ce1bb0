"""Continuous batching: which requests run this step, with how many tokens, and who gets preempted.

Each step (the shape of vLLM v1's and nano-vllm's schedulers):
1. every running request gets its pending tokens — one for a decode, a chunk
   for a prefill still in progress — oldest first; when the pool cannot hold
   them, the newest running request is preempted (its blocks freed, its
   tokens recomputed later), until the request fits or is itself preempted;
2. waiting requests are admitted, oldest first, while `max_num_seqs`
   (counting each request's n samples) and the `max_num_batched_tokens`
   budget allow — the budget counts the token slots the step computes, the
   prefill run padded to its longest chunk (`_chunk`);
   a prompt longer than what is left, or than `max_prefill_len` (the
   per-request chunk cap), is prefilled in chunks across steps;
   prefix-cached blocks are taken at admission and not recomputed.
Slots are reserved (manager.append) here, so a scheduled step never runs out,
and the step comes out as data: per batch the requests and their
SequenceSteps (blocks, positions, tokens), plus the block copies to apply
first; the engine only turns that into feeds (runtime/feeds.step_feeds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pagedc.errors import PagedcError
from pagedc.runtime.block_manager import PagedKVCacheManager
from pagedc.runtime.feeds import SequenceStep
from pagedc.runtime.request import Request, Status


class SchedulerStalled(PagedcError, RuntimeError):
    """A step with work queued but nothing schedulable: raised instead of spinning forever."""


@dataclass
class ScheduledStep:
    """One step: what each scheduled request computes, and the block copies to apply before it runs.

    Decodes and prompt chunks are kept apart as they are scheduled: they run as two session runs, so
    one long chunk does not pad every decode row (and the budget check needs no pass over the step).
    """

    decodes: list[tuple[Request, SequenceStep]] = field(default_factory=list)    # one new token each
    prefills: list[tuple[Request, SequenceStep]] = field(default_factory=list)   # prompt chunks
    block_copies: list[tuple[int, int]] = field(default_factory=list)            # (src, dst) copy-on-write copies

    def add(self, request: Request, seq_step: SequenceStep) -> None:
        (self.decodes if len(seq_step.positions) == 1 else self.prefills).append((request, seq_step))

    def drop(self, request: Request) -> None:
        self.decodes = [(r, s) for r, s in self.decodes if r is not request]
        self.prefills = [(r, s) for r, s in self.prefills if r is not request]


class Scheduler:
    def __init__(self, manager: PagedKVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_prefill_seqs: int | None = None, max_prefill_len: int | None = None):
        """max_prefill_seqs / max_prefill_len: the largest prefill run [rows, tokens per row] a step may have
        (EngineOptions.max_prefill_chunk or the backend's default, capped by the static buckets' shapes)."""
        self.manager = manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.max_prefill_seqs = max_prefill_seqs or max_num_seqs
        self.max_prefill_len = max_prefill_len or max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        step = ScheduledStep()
        for request in list(self.running):
            if request.status is not Status.RUNNING:
                continue                                    # preempted earlier in this loop
            if request.is_prefilling:
                tokens = request.pending_tokens()[: self._chunk(step)]
            else:
                tokens = request.pending_tokens()
                tokens = tokens if self._cost(step) + len(tokens) <= self.max_num_batched_tokens else []
            if tokens:
                self._reserve(request, tokens, step)
        while self.waiting and self._has_room(self.waiting[0]) and self._chunk(step) > 0:
            if not self._admit(self.waiting[0], self._chunk(step), step):
                break
        if not (step.decodes or step.prefills) and self.has_work():
            raise SchedulerStalled(self._stall_reason())
        step.block_copies = self.manager.take_copies()
        return step

    def add_forked(self, request: Request) -> None:
        """A sample forked from a running request (n > 1) runs from the next step on."""
        self.running.append(request)

    def _stall_reason(self) -> str:
        waiting = self.waiting[0] if self.waiting else None
        head = (f"request {waiting.request_id} ({len(waiting.all_tokens)} tokens) cannot be admitted"
                if waiting else "no running request can take a token")
        return (f"the scheduler can make no progress: {head}; {len(self.running)} running, {len(self.waiting)} "
                f"waiting, {self.manager.num_free_blocks} free blocks, max_num_seqs {self.max_num_seqs}, "
                f"max_num_batched_tokens {self.max_num_batched_tokens}. This is a bug in pagedc: please report it")

    def _has_room(self, request: Request) -> bool:
        """max_num_seqs counts sequences: a request with n samples forks into n after its prefill (num_samples
        is n until then, 1 after), so running requests count what they will fork into too."""
        return sum(r.num_samples for r in self.running) + request.num_samples <= self.max_num_seqs

    def _cost(self, step: ScheduledStep) -> int:
        """Token slots the step computes: one per decode, and the prefill run padded to its longest chunk."""
        width = max((len(s.positions) for _, s in step.prefills), default=0)
        return len(step.decodes) + len(step.prefills) * width

    def _chunk(self, step: ScheduledStep) -> int:
        """Prefill tokens one more request may take this step (0 once the prefill run is full).

        NOTE: the prefill run is one [B, S] session run, so a row shorter than the longest pads up to it.
        The first chunk sets S; later rows take at most S tokens (a longer prompt continues next step)
        and each costs S of the budget. Worked example, budget 2048, prompts 300, 50, 900 waiting:
        [300, 50→pad 300, 300 of the 900] = 900 slots, not [300, 50, 900] padded to 2700.
        """
        prefills = step.prefills
        if len(prefills) >= self.max_prefill_seqs:
            return 0
        left = self.max_num_batched_tokens - self._cost(step)
        if not prefills:
            return max(0, min(left, self.max_prefill_len))
        width = max(len(s.positions) for _, s in prefills)
        return width if left >= width else 0

    def finish(self, request: Request, status: Status = Status.FINISHED, reason: str | None = None) -> None:
        """Drop a request from the queues and free its blocks; `reason`: "stop", "length" or "abort"."""
        request.status, request.finish_reason = status, reason
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        if request.request_id in self.manager:
            self.manager.free(request.request_id)

    # -- internals -------------------------------------------------------------------
    def _reserve(self, request: Request, tokens: list[int], step: ScheduledStep) -> bool:
        """Append `tokens` for a running request, preempting the newest others while the pool is short."""
        while not self.manager.can_append(request.request_id, len(tokens)):
            victim = self.running[-1]
            self._preempt(victim, step)
            if victim is request:
                return False
        step.add(request, self.manager.append(request.request_id, len(tokens), tokens))
        return True

    def _admit(self, request: Request, budget: int, step: ScheduledStep) -> bool:
        """Take the oldest waiting request with up to `budget` of its tokens, if the pool can hold them."""
        cached = self.manager.add(request.request_id, request.all_tokens, request.cache_key)
        # Keep at least the last token to compute: it yields the logits to sample from.
        request.num_computed = min(cached, len(request.all_tokens) - 1)
        tokens = request.pending_tokens()[:budget]
        if not self.manager.can_append(request.request_id, len(tokens)):
            self.manager.free(request.request_id)
            request.num_computed = 0
            return False
        self.waiting.popleft()
        request.status = Status.RUNNING
        self.running.append(request)
        step.add(request, self.manager.append(request.request_id, len(tokens), tokens))
        return True

    def _preempt(self, request: Request, step: ScheduledStep) -> None:
        """Free a running request's blocks; it goes back to the front of the queue to be recomputed."""
        self.running.remove(request)
        self.manager.free(request.request_id)
        step.drop(request)
        request.status, request.num_computed = Status.WAITING, 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
