"""`pagedc serve` as a subprocess on a loopback port, driven by the official openai client.

One server for the module (tiny model, ~2 s to start); greedy outputs are
checked against `Engine.generate` on the same compiled directory, in this
process. Signals and --api-key get servers of their own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagedc.runtime import Engine, SamplingParams
from pagedc.serve.model_text import ModelText
from tests.serve.server_process import ServerProcess

MODEL = "tiny.paged"


@pytest.fixture(scope="module")
def server(served_model):
    process = ServerProcess(served_model)
    yield process
    process.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(served_model):
    return Engine.from_manifest(served_model)


@pytest.fixture(scope="module")
def text(served_model):
    return ModelText.load(served_model)


def _greedy(engine, text, prompt_ids, max_tokens, **kw) -> tuple[str, list[int]]:
    """What the server should answer: Engine.generate alone on the prompt, stopping on the model's eos."""
    tokens = engine.generate([prompt_ids], max_tokens, SamplingParams(**kw), sorted(text.eos_token_ids))[0]
    shown = tokens[:-1] if tokens and tokens[-1] in text.eos_token_ids else tokens
    return text.decode(shown), tokens


def _metrics(server) -> dict[str, float]:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for s in family.samples:
            key = s.name + ("" if set(s.labels) <= {"model_name"} else json.dumps(
                {k: v for k, v in s.labels.items() if k != "model_name"}, sort_keys=True))
            samples[key] = s.value
    return samples


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, 300, int(rng.integers(4, 40)))] for _ in range(count)]


# -- completions and chat ----------------------------------------------------------------------
def test_completions_greedy_equal_engine_generate(client, engine, text):
    for prompt in ["Once upon a time", "Paged attention stores keys"]:
        expected, tokens = _greedy(engine, text, text.encode(prompt, add_special_tokens=True), 24)
        result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert result.choices[0].text == expected
        assert result.choices[0].finish_reason == ("stop" if len(tokens) < 24 else "length")
        assert result.usage.completion_tokens == len(tokens)
        assert result.usage.prompt_tokens == len(text.encode(prompt, add_special_tokens=True))
    ids = _prompts(2, seed=1)
    result = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert [c.text for c in result.choices] == [_greedy(engine, text, p, 12)[0] for p in ids]


def test_completions_stream_equals_whole_response(client):
    kwargs = dict(model=MODEL, prompt="The quick brown fox", max_tokens=30, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_greedy_equals_engine_generate_on_the_template(client, engine, text):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = text.encode(text.chat_template.render(messages), add_special_tokens=False)
    expected, tokens = _greedy(engine, text, prompt_ids, 20)
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected
    assert whole.usage.prompt_tokens == len(prompt_ids) and whole.usage.completion_tokens == len(tokens)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_n2_gives_two_choices_sampled_with_seed_and_seed_plus_1(client, engine, text):
    prompt = text.encode("Héllo wörld", add_special_tokens=True)
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, n=2, temperature=0.9, seed=7)
    assert [c.index for c in result.choices] == [0, 1]
    sampling = SamplingParams(temperature=0.9, seed=7)
    expected = engine.generate([prompt, prompt], 16, sampling, sorted(text.eos_token_ids))   # seeds 7 and 8
    assert [c.text for c in result.choices] == [text.decode([t for t in e if t not in text.eos_token_ids])
                                                for e in expected]
    assert result.choices[0].text != result.choices[1].text


def test_stop_strings_and_stop_token_ids_finish_with_stop(client, engine, text):
    prompt = "Once upon a time"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, extra_body={
        "ignore_eos": True})
    whole = full.choices[0].text
    stop = next(whole[i:i + 3] for i in range(4, len(whole) - 3) if "\ufffd" not in whole[i:i + 3])
    expected = whole[: whole.find(stop)]
    for stream in (False, True):
        result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stop=[stop],
                                           stream=stream, extra_body={"ignore_eos": True})
        choices = [c.choices[0] for c in result] if stream else result.choices
        assert "".join(c.text for c in choices) == expected
        assert choices[-1].finish_reason == "stop"
    _, tokens = _greedy(engine, text, text.encode(prompt, add_special_tokens=True), 40)
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0,
                                       extra_body={"stop_token_ids": [tokens[5]], "ignore_eos": True})
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == tokens.index(tokens[5]) + 1


# -- concurrency, disconnects --------------------------------------------------------------------
def test_32_concurrent_streams_equal_their_runs_alone_and_were_batched(server, engine, text):
    prompts = _prompts(32, seed=2)
    before = _metrics(server)

    async def one(client, prompt):
        stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0,
                                                 stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    outputs = asyncio.run(all_at_once())
    assert outputs == [_greedy(engine, text, p, 16)[0] for p in prompts]
    after = _metrics(server)
    steps = after["pagedc:step_batch_size_count"] - before["pagedc:step_batch_size_count"]
    single = after['pagedc:step_batch_size_bucket{"le": "1.0"}'] - before['pagedc:step_batch_size_bucket{"le": "1.0"}']
    assert steps > 0 and single < steps, "no engine step sampled more than one request"


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0, "stream": True,
            "ignore_eos": True}
    aborted = _metrics(server).get('pagedc:request_success_total{"finished_reason": "abort"}', 0)
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(10):
            next(lines)
        assert _metrics(server)["pagedc:kv_cache_usage_perc"] > 0
    deadline = time.monotonic() + 15
    while (metrics := _metrics(server))["pagedc:kv_cache_usage_perc"] > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics["pagedc:kv_cache_usage_perc"] == 0 and metrics["pagedc:num_requests_running"] == 0
    assert metrics['pagedc:request_success_total{"finished_reason": "abort"}'] == aborted + 1
