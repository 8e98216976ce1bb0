"""Seeded soak test of the engine: 10,000 steps of random traffic under a small pool.

Random arrivals (prompts sharing a few prefixes, so the prefix cache hits),
random prompt and output lengths (some past the model's 64 positions, so
sequences stop with finish reason "length"), n > 1 forks, stop tokens,
sampled and greedy requests, aborts at every stage (queued before the step
sees it, waiting, prefilling, decoding, a forked sample before and after its
fork), and preemptions (the pool holds ~90 tokens, the batch up to 6
sequences). After every step the block manager's invariants hold; at the end
no block is held; a sample of greedy requests produced exactly what the same
request produces alone.

A 1-layer, hidden-32 reference decoder keeps each step ~1 ms on ONNX Runtime.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from pagedc.build import CompileOptions, compile_model
from pagedc.runtime import Engine, EngineOptions, SamplingParams, SessionOptions
from pagedc.runtime.request import Status
from pagedc.testing import DecoderConfig, build_decoder

NUM_STEPS = 10_000
CONFIG = DecoderConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                       vocab_size=31, max_position_embeddings=64)
ONE_THREAD = SessionOptions(intra_op_threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("soak")
    onnx.save(build_decoder(CONFIG, "decomposed"), str(directory / "tiny.onnx"))
    out = directory / "tiny.paged"
    compile_model(directory / "tiny.onnx", out, CompileOptions(block_size=4, num_blocks=24))   # 23 usable blocks
    return out


class Traffic:
    """Seeded random requests and aborts; remembers what it asked for and when it aborted."""

    def __init__(self, engine: Engine, seed: int):
        self.engine, self.rng = engine, np.random.default_rng(seed)
        self.prefixes = [[int(t) for t in self.rng.integers(1, CONFIG.vocab_size, 12)] for _ in range(3)]
        self.asked: dict[int, dict] = {}
        self.abort_stages: collections.Counter = collections.Counter()

    def arrive(self) -> None:
        rng = self.rng
        head = self.prefixes[rng.integers(3)][: int(rng.integers(0, 13))] if rng.random() < 0.6 else []
        prompt = head + [int(t) for t in rng.integers(1, CONFIG.vocab_size, int(rng.integers(1, 30)))]
        greedy = rng.random() < 0.7
        request = dict(prompt=prompt, max_new_tokens=int(rng.integers(1, 40)), n=int(rng.choice([1, 1, 1, 2, 3])),
                       sampling=SamplingParams(0.0 if greedy else 0.8, top_k=0 if greedy else 8, seed=int(rng.integers(1000))),
                       stop_token_ids=[int(rng.integers(1, CONFIG.vocab_size))] if rng.random() < 0.3 else [])
        request_id = self.engine.add_request(**request)
        self.asked[request_id] = request

    def abort_one(self) -> None:
        live = [i for i, r in self.engine.requests.items() if not r.is_done]
        queued = [i for i in self.asked if i not in self.engine.requests]
        reserved = [i + k for i, r in self.asked.items() for k in range(1, r["n"]) if i + k not in self.engine.requests]
        by_stage = collections.defaultdict(list)       # a stage first, so rare stages get aborts too
        for request_id in live + queued + reserved:
            by_stage[self._stage(request_id)].append(request_id)
        if not by_stage:
            return
        stage = sorted(by_stage)[int(self.rng.integers(len(by_stage)))]
        self.abort_stages[stage] += 1
        self.engine.abort(int(self.rng.choice(by_stage[stage])))

    def _stage(self, request_id: int) -> str:
        request = self.engine.requests.get(request_id)
        if request is None:
            return "queued" if request_id in self.asked else "sample not forked yet"
        if request.status is Status.WAITING:
            return "preempted" if request.num_preemptions else "waiting"
        if request_id not in self.asked:
            return "forked sample"
        return "prefilling" if request.is_prefilling else "decoding"


def test_engine_soak(tiny):
    engine = Engine.from_manifest(tiny, ONE_THREAD, EngineOptions(max_num_seqs=6, max_num_batched_tokens=24))
    traffic = Traffic(engine, seed=1234)
    for step in range(NUM_STEPS):
        if traffic.rng.random() < 0.2:
            traffic.arrive()
        if traffic.rng.random() < 0.05:
            traffic.abort_one()
        engine.step()
        engine.manager.check_invariants()
    while engine.has_unfinished():
        engine.step()
        engine.manager.check_invariants()

    stats, metrics = engine.manager.stats(), engine.metrics()
    assert stats["blocks_used"] == 0 and stats["num_sequences"] == 0, stats
    assert all(r.is_done for r in engine.requests.values())
    reasons = collections.Counter(r.finish_reason for r in engine.requests.values())
    print(f"\nsoak: {len(traffic.asked)} requests, {metrics['steps']} runs, finish reasons {dict(reasons)}, "
          f"aborts {dict(traffic.abort_stages)}, preemptions {metrics['preemptions']}, "
          f"prefix hit tokens {metrics['prefix_hit_tokens']}, cow copies {stats['cow_copies']}")
    assert metrics["preemptions"] > 0 and metrics["prefix_hit_tokens"] > 0 and stats["cow_copies"] > 0
    assert {"stop", "length", "abort"} <= set(reasons)
    assert {"queued", "waiting", "prefilling", "decoding", "forked sample"} <= set(traffic.abort_stages)
    assert any(len(r.all_tokens) >= engine.max_model_len for r in engine.requests.values())   # hit 64 positions
    _greedy_sample_equals_runs_alone(tiny, engine, traffic)


def _greedy_sample_equals_runs_alone(tiny, engine: Engine, traffic: Traffic) -> None:
    finished = [(i, r) for i, r in traffic.asked.items() if r["n"] == 1 and r["sampling"].is_greedy
                and engine.requests[i].finish_reason in ("stop", "length")]
    picks = [finished[int(k)] for k in np.random.default_rng(0).choice(len(finished), 20, replace=False)]
    alone = Engine.from_manifest(tiny, ONE_THREAD)
    for request_id, asked in picks:
        [tokens] = alone.generate([asked["prompt"]], asked["max_new_tokens"], stop_token_ids=asked["stop_token_ids"])
        assert engine.requests[request_id].output == tokens, request_id
