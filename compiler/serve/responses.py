"""Response bodies in OpenAI's shapes: completions and chat completions, whole or as SSE chunks.

    completion:  {"id": "cmpl-..", "object": "text_completion", "choices": [{"index", "text", "finish_reason"}], "usage"}
    chat:        {"id": "chatcmpl-..", "object": "chat.completion",
                  "choices": [{"index", "message": {"role": "assistant", "content"}, "finish_reason"}], "usage"}
    chunks:      the same with "object" *.chunk / text_completion and per-choice "text" or "delta";
                 chat streams open each choice with delta {"role": "assistant", "content": ""};
                 with stream_options.include_usage every chunk has "usage": null and a last one
                 with "choices": [] carries the usage; the stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from pagedc.serve.generation import Delta, Generation
from pagedc.serve.protocol import ApiError


class ResponseWriter:
    def __init__(self, kind: str, model: str, include_usage: bool = False):
        """kind: "completion" or "chat"."""
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    # -- whole responses --------------------------------------------------------------------
    async def collect(self, generation: Generation) -> dict:
        texts = [""] * len(generation.choices)
        reasons: list[str | None] = [None] * len(generation.choices)
        async for deltas in generation.deltas():
            for delta in deltas:
                texts[delta.choice] += delta.text
                reasons[delta.choice] = delta.finish_reason or reasons[delta.choice]
        if self.kind == "completion":
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._head(""), "choices": choices, "usage": generation.usage}

    # -- streams ------------------------------------------------------------------------------
    async def stream(self, generation: Generation) -> AsyncIterator[str]:
        """SSE events; an engine failure mid-stream becomes a `data: {"error": ...}` event."""
        try:
            if self.kind == "chat":
                yield self._event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None} for i in range(len(generation.choices))])
            async for deltas in generation.deltas():
                yield self._event([self._choice_chunk(d) for d in deltas])
            if self.include_usage:
                yield _sse({**self._head(".chunk"), "choices": [], "usage": generation.usage})
        except ApiError as err:
            yield _sse(err.body())
        yield "data: [DONE]\n\n"

    def _choice_chunk(self, delta: Delta) -> dict:
        if self.kind == "completion":
            return {"index": delta.choice, "text": delta.text, "logprobs": None, "finish_reason": delta.finish_reason}
        return {"index": delta.choice, "delta": {"content": delta.text} if delta.text else {}, "logprobs": None,
                "finish_reason": delta.finish_reason}

    def _event(self, choices: list[dict]) -> str:
        chunk = {**self._head(".chunk"), "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return _sse(chunk)

    def _head(self, suffix: str) -> dict:
        obj = "text_completion" if self.kind == "completion" else "chat.completion" + suffix
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
