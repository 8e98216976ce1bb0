"""The two sides of bench_vs_genai.py, each timed the same way.

    side.generate(prompts [B, P], new_tokens) -> Timed    greedy, every row exactly new_tokens long
    side.serve(requests) -> Served                          a mixed workload, all requests arriving at once

Time to first token (prefill) runs from handing the prompts over to having
the first token of every row; a decode step is one later iteration that
yields a token per row (model run + sampling + the Python around it). Not
timed: creating genai's Generator (it allocates its KV buffer of max_length);
timed: pagedc's add_request in serve() (a list append).

genai settings are applied with og.Config.overlay, so the exported
genai_config.json stays as the builder wrote it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from pagedc.runtime import Engine, EngineOptions, SessionOptions


@dataclass
class Timed:
    tokens: np.ndarray        # [B, new_tokens] int
    ttft_s: float
    step_s: list[float]       # one per decode step after the first token

    def decode_tok_s(self) -> float:
        return len(self.tokens) * len(self.step_s) / sum(self.step_s)


@dataclass
class Served:
    outputs: list[list[int]]  # per request, in request order (empty when a side cannot attribute tokens)
    num_tokens: int
    wall_s: float


def genai_overlay(threads: int, max_length: int, profile_prefix: str | None = None,
                  engine_batch: int | None = None) -> str:
    """The JSON overlay of genai_config.json for one run: threads, max_length, profiling, engine batch."""
    options: dict = {"intra_op_num_threads": threads}
    if profile_prefix:
        options["enable_profiling"] = profile_prefix
    overlay: dict = {"model": {"context_length": max_length, "decoder": {"session_options": options}},
                     "search": {"max_length": max_length}}
    if engine_batch:
        overlay["engine"] = {"static_batching": {"max_batch_size": engine_batch}}
    return json.dumps(overlay)


def load_genai(model_dir: Path, overlay: str) -> og.Model:
    config = og.Config(str(model_dir))
    config.clear_providers()              # CPU
    config.overlay(overlay)
    return og.Model(config)


class GenaiGenerator:
    """onnxruntime-genai's Generator, one batch at a time."""

    def __init__(self, name: str, model: og.Model):
        self.name, self.model = name, model

    def generate(self, prompts: np.ndarray, new_tokens: int) -> Timed:
        batch, prompt_len = prompts.shape
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=prompt_len + new_tokens, do_sample=False, batch_size=batch)
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(np.ascontiguousarray(prompts, np.int32))    # runs the prefill
        generator.generate_next_token()                                     # samples the first token
        tokens = [generator.get_next_tokens().copy()]
        ttft = time.perf_counter() - start
        steps = []
        for _ in range(new_tokens - 1):
            start = time.perf_counter()
            generator.generate_next_token()
            tokens.append(generator.get_next_tokens().copy())
            steps.append(time.perf_counter() - start)
        del generator
        return Timed(np.stack(tokens, axis=1), ttft, steps)

    def serve(self, requests: list[tuple[list[int], int]]) -> Served:
        """One request at a time (what a Generator-based server without batching does)."""
        start = time.perf_counter()
        outputs = [self.generate(np.asarray([prompt]), n).tokens[0].tolist() for prompt, n in requests]
        return Served(outputs, sum(map(len, outputs)), time.perf_counter() - start)


class GenaiEngine:
    """onnxruntime-genai's Engine: all requests submitted at once, events drained until none is pending."""

    def __init__(self, name: str, model: og.Model):
        self.name, self.model = name, model

    def serve(self, requests: list[tuple[list[int], int]]) -> Served:
        engine = og.Engine(self.model)
        buffer = engine.create_event_buffer(max(64, 2 * len(requests)))
        token_flag, failed_flag = int(og.EngineEventFlags.TOKEN), int(og.EngineEventFlags.FAILED)
        handles, num_tokens = [], 0
        start = time.perf_counter()
        for prompt, max_new in requests:
            request = engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(max_new)
            options.set_do_sample(False)
            request.begin_turn(np.asarray(prompt, np.int32), options)
            handles.append(request)
        while engine.has_pending_requests():
            for event in engine.run(buffer):
                if int(event.flags) & failed_flag:
                    raise RuntimeError(f"onnxruntime-genai Engine: a request failed (error {event.error_code})")
                num_tokens += bool(int(event.flags) & token_flag)
        wall = time.perf_counter() - start
        for request in handles:
            request.close()
        return Served([], num_tokens, wall)


class PagedEngine:
    """pagedc's Engine over a compiled model, stepped by hand so each step can be timed."""

    def __init__(self, name: str, directory: Path, threads: int, prefix_caching: bool, session=None):
        """The engine as a user gets it (EngineOptions' defaults: 2048 tokens per step, prompt chunks of at
        most 256 per request), with 64 requests at once and prefix caching as asked."""
        self.name = name
        options = EngineOptions(max_num_seqs=64, enable_prefix_caching=prefix_caching)
        if session is None:
            self.engine = Engine.from_manifest(directory, SessionOptions(intra_op_threads=threads), options)
        else:
            from pagedc.manifest import Manifest
            self.engine = Engine(Manifest.read(directory), directory, engine_options=options, session=session)

    def generate(self, prompts: np.ndarray, new_tokens: int) -> Timed:
        ids = [self.engine.add_request(row.tolist(), max_new_tokens=new_tokens) for row in prompts]
        outputs: dict[int, list[int]] = {i: [] for i in ids}
        start = time.perf_counter()
        while not all(outputs.values()):              # until every row has its first token
            self._take(self.engine.step(), outputs)
        ttft = time.perf_counter() - start
        steps = []
        while self.engine.has_unfinished():
            start = time.perf_counter()
            self._take(self.engine.step(), outputs)
            steps.append(time.perf_counter() - start)
        return Timed(np.asarray([outputs[i] for i in ids]), ttft, steps)

    def serve(self, requests: list[tuple[list[int], int]]) -> Served:
        start = time.perf_counter()
        ids = [self.engine.add_request(prompt, max_new_tokens=n) for prompt, n in requests]
        outputs: dict[int, list[int]] = {i: [] for i in ids}
        while self.engine.has_unfinished():
            self._take(self.engine.step(), outputs)
        wall = time.perf_counter() - start
        return Served([outputs[i] for i in ids], sum(map(len, outputs.values())), wall)

    @staticmethod
    def _take(events: list[tuple[int, int]], outputs: dict[int, list[int]]) -> None:
        for request_id, token in events:
            outputs[request_id].append(token)
