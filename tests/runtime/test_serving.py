"""Serving: prefix caching, preemption, n > 1 sampling with fork, aborts, concurrent arrivals."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pagedc.build import CompileOptions, compile_model
from pagedc.manifest import Manifest
from pagedc.runtime import Engine, EngineOptions, SamplingParams

SYSTEM = [int(t) for t in np.random.default_rng(0).integers(1, 97, 20)]          # shared system prompt
PROMPTS = [SYSTEM + [int(t) for t in np.random.default_rng(i).integers(1, 97, 3 + i)] for i in range(1, 7)]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, dense_model):
    def build(layout: str = "separate", num_blocks: int = 96):
        out = tmp_path_factory.mktemp("serving") / "paged"
        compile_model(dense_model("gqa"), out, CompileOptions(block_size=4, layout=layout, num_blocks=num_blocks))
        return out
    return build


def _engine(path, **options) -> Engine:
    return Engine(Manifest.read(path), path, engine_options=EngineOptions(**options))


def _run_all(engine: Engine, prompts, max_new_tokens=12, arrive_every=0, **kw) -> dict[int, list[int]]:
    """Requests arriving one every `arrive_every` steps (0: all at once); greedy; returns outputs by arrival."""
    ids, pending = [], list(prompts)
    step = 0
    while pending or engine.has_unfinished():
        if pending and (arrive_every == 0 or step % arrive_every == 0):
            for prompt in (pending if arrive_every == 0 else pending[:1]):
                ids.append(engine.add_request(prompt, max_new_tokens, **kw))
            pending = [] if arrive_every == 0 else pending[1:]
        engine.step()
        step += 1
    return {i: engine.requests[r].output for i, r in enumerate(ids)}


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_prefix_caching_changes_no_output_and_saves_prefill(compiled, layout):
    path = compiled(layout)
    cached, plain = _engine(path), _engine(path, enable_prefix_caching=False)
    with_cache = _run_all(cached, PROMPTS, arrive_every=3)
    without = _run_all(plain, PROMPTS, arrive_every=3)
    assert with_cache == without
    hits = cached.metrics()
    assert hits["prefix_hit_tokens"] >= 5 * 16 and hits["prefix_hit_rate"] > 0.4     # 4 full blocks of SYSTEM each
    assert hits["prefill_tokens_computed"] <= plain.metrics()["prefill_tokens_computed"] - 5 * 16
    assert cached.manager.stats()["blocks_used"] == 0 and cached.manager.stats()["blocks_cached"] > 0
    cached.manager.check_invariants()


def test_a_cache_key_separates_prefixes(compiled):
    engine = _engine(compiled())
    _run_all(engine, PROMPTS[:1], cache_key="adapter-a")
    _run_all(engine, PROMPTS[1:2], cache_key="adapter-b")
    assert engine.metrics()["prefix_hit_tokens"] == 0
    _run_all(engine, PROMPTS[2:3], cache_key="adapter-a")
    assert engine.metrics()["prefix_hit_tokens"] == 20 // 4 * 4


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_preemption_under_a_tiny_pool_changes_no_output(compiled, layout):
    roomy = _run_all(_engine(compiled(layout)), PROMPTS, max_new_tokens=16)
    small = _engine(compiled(layout, num_blocks=27 if layout == "separate" else 53), enable_prefix_caching=False)
    assert _run_all(small, PROMPTS, max_new_tokens=16) == roomy
    assert small.metrics()["preemptions"] > 0
    assert small.manager.stats()["blocks_used"] == 0
    small.manager.check_invariants()


def test_chunked_prefill_under_a_small_token_budget_changes_no_output(compiled):
    path = compiled()
    assert _run_all(_engine(path, max_num_batched_tokens=7), PROMPTS) == _run_all(_engine(path), PROMPTS)


def test_prefill_chunks_are_capped_per_request_and_change_no_output(compiled):
    """max_prefill_chunk splits a prompt into chunks of at most that many tokens, whatever the budget allows."""
    path = compiled()
    prompt = PROMPTS[0]                                                               # 24 tokens
    runs = {}
    for cap in (5, 512):
        engine = _engine(path, max_prefill_chunk=cap, enable_prefix_caching=False)
        runs[cap] = engine.generate([prompt], 6)
        assert engine.times.prefill.num_tokens == len(prompt)
        assert engine.times.prefill.num_steps == -(-len(prompt) // cap)                # 5 chunks (5+5+5+5+4), or one
    assert runs[5] == runs[512]
    assert _engine(path).scheduler.max_prefill_len == 256                            # ONNX Runtime's default
    assert _run_all(_engine(path, max_prefill_chunk=5), PROMPTS) == _run_all(_engine(path), PROMPTS)


def test_n_samples_share_the_prompt_blocks_and_equal_independent_runs(compiled):
    path = compiled()
    engine = _engine(path, enable_prefix_caching=False)
    params = SamplingParams(temperature=1.0, top_k=30, seed=11)
    prompt = PROMPTS[0] + [5]                                                         # 25 tokens: last block partial
    first = engine.add_request(prompt, 10, params, n=3)
    engine.step()                                                                     # prefill + fork
    blocks = [engine.manager.block_ids(first + k)[0] for k in range(3)]
    assert blocks[0] == blocks[1] == blocks[2] and len(blocks[0]) == 7                # stored once
    assert engine.manager.stats()["blocks_used"] == 7
    while engine.has_unfinished():
        engine.step()
    samples = [engine.requests[first + k].output for k in range(3)]
    assert engine.manager.stats()["cow_copies"] == 2                                  # two samples copy the partial block
    independent = []
    for k in range(3):
        alone = _engine(path)
        rid = alone.add_request(prompt, 10, SamplingParams(temperature=1.0, top_k=30, seed=11 + k))
        while alone.has_unfinished():
            alone.step()
        independent.append(alone.requests[rid].output)
    assert samples == independent and len({tuple(s) for s in samples}) > 1


@pytest.mark.parametrize("stage", ["waiting", "prefilling", "decoding", "finished"])
def test_abort_at_every_stage_leaves_no_leak(compiled, stage):
    engine = _engine(compiled(), max_num_batched_tokens=8, max_num_seqs=2)
    ids = [engine.add_request(p, 8) for p in PROMPTS[:3]]
    target = {"waiting": ids[2], "prefilling": ids[0], "decoding": ids[0], "finished": ids[0]}[stage]
    steps = {"waiting": 1, "prefilling": 1, "decoding": 6, "finished": 30}[stage]
    for _ in range(steps):
        engine.step()
    engine.abort(target)
    while engine.has_unfinished():
        engine.step()
    assert engine.requests[target].status.value in ("aborted", "finished")
    stats = engine.manager.stats()
    assert stats["blocks_used"] == 0 and stats["num_sequences"] == 0
    engine.manager.check_invariants()


def test_requests_added_from_other_threads_join_between_steps(compiled):
    engine = _engine(compiled())
    expected = _run_all(_engine(compiled()), PROMPTS[:4])
    ids: list[int] = []
    threads = [threading.Thread(target=lambda p=p: ids.append(engine.add_request(p, 12))) for p in PROMPTS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while engine.has_unfinished():
        engine.step()
    outputs = sorted(engine.requests[r].output for r in ids)
    assert outputs == sorted(expected.values())


def test_metrics_report_usage_rates_and_ttft(compiled):
    engine = _engine(compiled())
    _run_all(engine, PROMPTS, arrive_every=2)
    metrics = engine.metrics()
    assert set(metrics) >= {"kv_usage", "prefix_hit_rate", "preemptions", "decode_tokens_per_s", "mean_ttft_s"}
    assert metrics["decode_tokens_per_s"] > 0 and metrics["mean_ttft_s"] > 0 and metrics["kv_usage"] == 0


def test_max_num_seqs_counts_each_requests_samples(compiled):
    """Two n=2 requests under max_num_seqs=3: the second waits until the first's samples finish, so no step runs
    more than 3 sequences (a static decode bucket of 3 would otherwise be overrun); n above the limit is refused."""
    path = compiled()
    engine = _engine(path, max_num_seqs=3, enable_prefix_caching=False)
    params = SamplingParams(temperature=1.0, top_k=30, seed=4)
    ids = [engine.add_request(PROMPTS[i], 6, params, n=2) for i in (0, 1)]
    most = 0
    while engine.has_unfinished():
        engine.step()
        most = max(most, len(engine.scheduler.running))
    assert most == 2
    for rid, i in zip(ids, (0, 1)):
        alone = _engine(path)
        first = alone.add_request(PROMPTS[i], 6, params, n=2)
        while alone.has_unfinished():
            alone.step()
        assert [engine.requests[rid + k].output for k in range(2)] == [alone.requests[first + k].output for k in range(2)]
    with pytest.raises(ValueError, match="n=4: the samples run as 4 sequences at once, and this engine runs at most 3"):
        engine.add_request(PROMPTS[0], 4, params, n=4)
