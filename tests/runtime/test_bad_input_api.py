"""Bad input through the Python API: each case raises a named pagedc error (or KeyError) with a clear message,
before anything changes; nothing hangs. The CLI cases are in tests/compiler/test_bad_input_cli.py.

| call | raises: message |
|---|---|
| PagedKVCacheManager(num_blocks="8") | RequestError: num_blocks must be an int >= 2, got str '8' |
| PagedKVCacheManager(8, block_size=0) / layout="paged" / enable_prefix_caching="yes" | RequestError: block_size must be an int >= 1, got 0 / layout must be one of ... / enable_prefix_caching must be True or False ... |
| manager.append(seq, -2) / append(seq, 1.5) | RequestError: num_new must be an int >= 0, got -2 / got float 1.5 |
| manager.append(seq, 2, [1]) | RequestError: append('a', 2) was given 1 token ids; give exactly num_new |
| manager.add(seq, "hello") / add(seq, [1.0]) | RequestError: prompt_token_ids must be a list of int token ids, got str 'hello'; tokenize text first ... / item 0 is float 1.0 |
| engine.add_request("hello") | RequestError: prompt must be a list of int token ids, got str 'hello'; tokenize text first ... |
| engine.add_request([1.5, 2]) / [True] | RequestError: prompt must hold int token ids; item 0 is float 1.5 / bool True |
| engine.add_request(np.array([1, 2])) | accepted (NumPy integers are token ids) |
| engine.add_request([1], max_new_tokens=0 / "3") / n=0 | RequestError: max_new_tokens must be an int >= 1, got 0 / str '3' / n must be an int >= 1, got 0 |
| engine.add_request([1], sampling="greedy") / stop_token_ids="2" / cache_key=5 | RequestError: sampling must be a SamplingParams ... / stop_token_ids must be a list ... / cache_key must be a string ... |
| engine.add_request([1] * 300) (256 positions) | RequestError: prompt has 300 tokens, more than the 256 this engine runs per sequence: the model embeds positions 0..255 ... |
| engine.generate([1, 2, 3]) (a flat list) | RequestError: prompts must be a list of prompts, each a list of token ids; got a flat list of ints: wrap it ... |
| engine.abort(999) / abort("x") (never issued) | KeyError: unknown request id 999: add_request() has returned ids 0..N |
| engine.abort(id) of a finished request | no-op (documented in Engine.abort) |
| engine.abort(id + 1) of an n=2 request before its fork | the sample is created aborted (finish reason "abort"); the parent runs on |
| EngineOptions(max_num_seqs=0) / max_num_batched_tokens="2" / enable_prefix_caching=1 | RequestError: EngineOptions.max_num_seqs must be an int >= 1, got 0 / ... |
| Engine(..., engine_options={"max_num_seqs": 4}) | RequestError: engine_options must be a EngineOptions, got dict |
| SessionOptions(optimization="fast") / intra_op_threads=-1 | RequestError: SessionOptions.optimization must be one of [...] / ... must be an int >= 0, got -1 |
| SamplingParams(temperature="hot") / nan / top_k=1.5 / top_p=0 / seed=-1 | RequestError: temperature must be a number, got str 'hot' / ... |
| Engine.from_manifest("model.onnx") | ManifestError: model.onnx is a model file, not a `pagedc compile` output; compile it first ... |
| a scheduler that cannot admit its only request | SchedulerStalled: the scheduler can make no progress: request 0 (20 tokens) cannot be admitted; ... |
"""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.build import CompileOptions, compile_model
from pagedc.errors import ManifestError, PagedcError, RequestError
from pagedc.runtime import Engine, EngineOptions, PagedKVCacheManager, SamplingParams, SessionOptions
from pagedc.runtime.request import Request
from pagedc.runtime.scheduler import Scheduler, SchedulerStalled


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory, dense_model):
    out = tmp_path_factory.mktemp("api") / "paged"
    compile_model(dense_model("decomposed"), out, CompileOptions(block_size=4, num_blocks=96))
    return out


@pytest.fixture
def engine(engine_dir):
    return Engine.from_manifest(engine_dir)


@pytest.mark.parametrize("args,kwargs,message", [
    (("8", 4), {}, "num_blocks must be an int >= 2, got str '8'"),
    ((8.0, 4), {}, "num_blocks must be an int >= 2, got float 8.0"),
    ((8,), {"block_size": 0}, "block_size must be an int >= 1, got 0"),
    ((8, 4), {"layout": "paged"}, "layout must be one of ('separate', 'combined'), got 'paged'"),
    ((8, 4), {"enable_prefix_caching": "yes"}, "enable_prefix_caching must be True or False, got str 'yes'"),
])
def test_manager_construction(args, kwargs, message):
    with pytest.raises(RequestError) as info:
        PagedKVCacheManager(*args, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("call,message", [
    (lambda m: m.append("a", -2), "num_new must be an int >= 0, got -2"),
    (lambda m: m.append("a", 1.5), "num_new must be an int >= 0, got float 1.5"),
    (lambda m: m.can_append("a", -1), "num_new must be an int >= 0, got -1"),
    (lambda m: m.append("a", 2, [1]), "append('a', 2) was given 1 token ids; give exactly num_new"),
    (lambda m: m.add("b", "hello"), "prompt_token_ids must be a list of int token ids, got str 'hello'"),
    (lambda m: m.add("b", [1.0]), "prompt_token_ids must hold int token ids; item 0 is float 1.0"),
])
def test_manager_calls(call, message):
    manager = PagedKVCacheManager(8, 4)
    manager.add("a", [1, 2])
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(manager)
    manager.check_invariants()
    assert manager.num_tokens("a") == 0 and "b" not in manager


@pytest.mark.parametrize("args,kwargs,message", [
    (("hello",), {}, "prompt must be a list of int token ids, got str 'hello'; tokenize text first"),
    (([1.5, 2],), {}, "prompt must hold int token ids; item 0 is float 1.5"),
    (([True],), {}, "prompt must hold int token ids; item 0 is bool True"),
    (([],), {}, "prompt is empty"),
    (([-1],), {}, "prompt has token ids outside the vocabulary [0, 97): [-1]"),
    (([1],), {"max_new_tokens": 0}, "max_new_tokens must be an int >= 1, got 0"),
    (([1],), {"max_new_tokens": "3"}, "max_new_tokens must be an int >= 1, got str '3'"),
    (([1],), {"n": 0}, "n must be an int >= 1, got 0"),
    (([1],), {"sampling": "greedy"}, "sampling must be a SamplingParams, got str"),
    (([1],), {"stop_token_ids": "2"}, "stop_token_ids must be a list of int token ids, got str"),
    (([1],), {"cache_key": 5}, "cache_key must be a string, got int"),
    (([1] * 300,), {}, "prompt has 300 tokens, more than the 256 this engine runs per sequence: "
                       "the model embeds positions 0..255"),
])
def test_add_request_refuses(engine, args, kwargs, message):
    with pytest.raises(RequestError) as info:
        engine.add_request(*args, **kwargs)
    assert message in str(info.value)
    assert not engine.has_unfinished()


def test_numpy_token_ids_are_accepted(engine):
    request_id = engine.add_request(np.array([5, 6, 7]), max_new_tokens=3)
    while engine.has_unfinished():
        engine.step()
    assert len(engine.requests[request_id].output) == 3


def test_generate_wants_a_list_of_prompts(engine):
    with pytest.raises(RequestError, match="got a flat list of ints: wrap it"):
        engine.generate([1, 2, 3])


def test_abort_of_an_unknown_id_is_a_key_error_and_of_a_finished_one_a_no_op(engine):
    with pytest.raises(KeyError, match="unknown request id 999"):
        engine.abort(999)
    with pytest.raises(KeyError, match="unknown request id 'x'"):
        engine.abort("x")
    [tokens] = engine.generate([[1, 2]], max_new_tokens=2)
    engine.abort(0)                                   # finished: nothing happens
    engine.step()
    assert engine.requests[0].output == tokens and engine.requests[0].finish_reason == "length"


def test_aborting_a_sample_before_its_fork(engine):
    parent = engine.add_request([1, 2, 3], max_new_tokens=4, n=3)
    engine.abort(parent + 1)
    while engine.has_unfinished():
        engine.step()
        engine.manager.check_invariants()
    assert engine.requests[parent + 1].finish_reason == "abort" and engine.requests[parent + 1].output == []
    assert len(engine.requests[parent].output) == 4 and len(engine.requests[parent + 2].output) == 4
    assert engine.manager.stats()["blocks_used"] == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"max_num_seqs": 0}, "EngineOptions.max_num_seqs must be an int >= 1, got 0"),
    ({"max_num_batched_tokens": "2"}, "EngineOptions.max_num_batched_tokens must be an int >= 1, got str '2'"),
    ({"enable_prefix_caching": 1}, "EngineOptions.enable_prefix_caching must be True or False, got int 1"),
    ({"max_prefill_chunk": 0}, "EngineOptions.max_prefill_chunk must be an int >= 1, got 0"),
])
def test_engine_options_are_checked_when_made(kwargs, message):
    with pytest.raises(RequestError) as info:
        EngineOptions(**kwargs)
    assert str(info.value) == message


def test_engine_options_of_the_wrong_type(engine_dir):
    with pytest.raises(RequestError, match="engine_options must be a EngineOptions, got dict"):
        Engine.from_manifest(engine_dir, engine_options={"max_num_seqs": 4})


@pytest.mark.parametrize("make,message", [
    (lambda: SessionOptions(optimization="fast"), "SessionOptions.optimization must be one of"),
    (lambda: SessionOptions(intra_op_threads=-1), "SessionOptions.intra_op_threads must be an int >= 0, got -1"),
    (lambda: SamplingParams(temperature="hot"), "temperature must be a number, got str 'hot'"),
    (lambda: SamplingParams(temperature=float("nan")), "temperature must be a number, got float nan"),
    (lambda: SamplingParams(top_k=1.5), "top_k must be an int >= 0, got float 1.5"),
    (lambda: SamplingParams(top_p=0), "top_p must be in (0, 1], got 0"),
    (lambda: SamplingParams(seed=-1), "seed must be an int >= 0, got -1"),
])
def test_option_objects_are_checked_when_made(make, message):
    with pytest.raises(RequestError) as info:
        make()
    assert message in str(info.value)


def test_from_manifest_given_an_onnx_file(dense_model):
    with pytest.raises(ManifestError, match="is a model file, not a `pagedc compile` output; compile it first"):
        Engine.from_manifest(dense_model("decomposed"))


def test_a_scheduler_that_cannot_progress_raises_instead_of_spinning():
    manager = PagedKVCacheManager(num_blocks=3, block_size=4)       # 2 usable blocks: 8 tokens
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=64)
    scheduler.add(Request(0, list(range(1, 21)), 4, SamplingParams(), np.random.default_rng(0)))
    with pytest.raises(SchedulerStalled, match=r"request 0 \(20 tokens\) cannot be admitted; 0 running, 1 waiting, "
                                               r"2 free blocks"):
        scheduler.schedule()
    assert issubclass(SchedulerStalled, PagedcError)
    manager.check_invariants()


def test_max_num_seqs_zero_no_longer_hangs(engine_dir):
    """The issue's hang: EngineOptions(max_num_seqs=0) is refused before an engine exists."""
    with pytest.raises(RequestError, match="max_num_seqs must be an int >= 1"):
        Engine.from_manifest(engine_dir, engine_options=EngineOptions(max_num_seqs=0)).generate([[1, 2]], 2)
