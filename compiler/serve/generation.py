"""One HTTP request's generation: its prompts checked and submitted, its samples read back as text.

    Generation.start(...)   check each prompt against the model's limits, submit it with n samples
    async for deltas in generation.deltas():   [Delta(choice, text, finish_reason)] per engine step
    generation.usage        prompt / completion / total tokens

Choice k of prompt i is index i * n + k (OpenAI's order) and samples with
seed + i * n + k. A sample ends on a stop token or max_tokens (the engine),
or on a stop string (here: the sample is aborted in the engine). When the
consumer stops early (a client disconnected, a task was cancelled), every
sample still running is aborted, so its blocks return to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pagedc.runtime import SamplingParams
from pagedc.serve.detokenize import IncrementalDetokenizer
from pagedc.serve.engine_thread import EngineThread, EngineUnavailable, Output
from pagedc.serve.protocol import ApiError


@dataclass(frozen=True)
class Limits:
    max_model_len: int         # prompt + new tokens of one sequence (compiled context or the whole pool)
    vocab_size: int
    limit_reason: str          # what sets max_model_len, for error messages


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None     # None: up to max_model_len
    n: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]


@dataclass
class Delta:
    choice: int
    text: str
    finish_reason: str | None


@dataclass
class _Choice:
    request_id: int
    detokenizer: IncrementalDetokenizer
    num_tokens: int = 0
    finish_reason: str | None = None


class Generation:
    def __init__(self, thread: EngineThread, prompts: list[list[int]], choices: list[_Choice],
                 queue: asyncio.Queue):
        self.thread, self.prompts, self.choices, self._queue = thread, prompts, choices, queue

    @classmethod
    def start(cls, thread: EngineThread, decode, prompts: list[list[int]], params: GenerationParams,
              limits: Limits) -> "Generation":
        """Check and submit every prompt (all or none); ApiError(400) for a prompt the model cannot take."""
        max_tokens = [check_prompt(p, params.max_tokens, limits, i if len(prompts) > 1 else None)
                      for i, p in enumerate(prompts)]
        queue: asyncio.Queue = asyncio.Queue()
        choices: list[_Choice] = []
        try:
            for i, (prompt, new_tokens) in enumerate(zip(prompts, max_tokens)):
                sampling = _with_seed(params.sampling, i * params.n)
                ids = thread.submit(prompt, new_tokens, sampling, params.stop_token_ids, params.n, queue, len(choices))
                choices += [_Choice(r, IncrementalDetokenizer(decode, prompt, params.stop)) for r in ids]
        except EngineUnavailable as err:
            thread.abort([c.request_id for c in choices])
            raise ApiError(503, f"the server cannot take requests now: {err}", type="server_error") from None
        except ValueError as err:              # the engine refused the request (RequestError is a ValueError)
            thread.abort([c.request_id for c in choices])
            raise ApiError(400, str(err)) from None
        return cls(thread, prompts, choices, queue)

    @property
    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def deltas(self) -> AsyncIterator[list[Delta]]:
        """Text as it is sampled, one list per engine step; ends when every choice has a finish_reason."""
        try:
            while any(c.finish_reason is None for c in self.choices):
                outputs: list[Output] = await self._queue.get()
                deltas = [d for d in map(self._apply, outputs) if d.text or d.finish_reason]
                if deltas:
                    yield deltas
        finally:
            self.abort()

    def abort(self) -> None:
        """Abort every sample not finished yet (idempotent; finished ones are already gone from the engine)."""
        self.thread.abort([c.request_id for c in self.choices if c.finish_reason is None])

    def _apply(self, output: Output) -> Delta:
        choice = self.choices[output.choice]
        if output.error is not None:
            raise ApiError(500, output.error, type="server_error")
        text = ""
        if output.token is not None:
            choice.num_tokens += 1
            is_stop_token = output.finish_reason == "stop"   # eos / stop_token_ids: not part of the text
            text = "" if is_stop_token else choice.detokenizer.add(output.token)
        choice.finish_reason = output.finish_reason
        if choice.detokenizer.is_stopped and choice.finish_reason is None:
            self.thread.abort([choice.request_id], reason="stop")
            choice.finish_reason = "stop"
        if choice.finish_reason is not None:
            text += choice.detokenizer.finish()
        return Delta(output.choice, text, choice.finish_reason)


def check_prompt(prompt: Sequence[int], max_tokens: int | None, limits: Limits, index: int | None = None) -> int:
    """The number of tokens to generate for `prompt`; ApiError(400) when the model cannot hold it."""
    name = "prompt" if index is None else f"prompt {index}"
    if not prompt:
        raise ApiError(400, f"{name} is empty (no tokens after tokenization); send some text", param="prompt")
    bad = [t for t in prompt if not 0 <= t < limits.vocab_size]
    if bad:
        raise ApiError(400, f"{name} has token ids outside the vocabulary [0, {limits.vocab_size}): {bad[:5]}",
                       param="prompt")
    room = limits.max_model_len - len(prompt)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = f"{len(prompt)} in the prompt" + (f", {max_tokens} in the completion" if max_tokens else "")
        raise ApiError(400, f"this model's maximum context length is {limits.max_model_len} tokens "
                            f"({limits.limit_reason}); {name} asks for {len(prompt) + (max_tokens or 0)} ({asked}). "
                            "Shorten the prompt or lower max_tokens", param="max_tokens" if room >= 1 else "prompt",
                       code="context_length_exceeded")
    return room if max_tokens is None else max_tokens


def _with_seed(sampling: SamplingParams, offset: int) -> SamplingParams:
    if sampling.seed is None or offset == 0:
        return sampling
    return SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed + offset)
