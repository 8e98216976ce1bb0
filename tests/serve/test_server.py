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



def test_a_client_that_gives_up_on_a_whole_response_frees_its_blocks(server):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0, "ignore_eos": True}
    aborted = _metrics(server).get('pagedc:request_success_total{"finished_reason": "abort"}', 0)
    # 900 tokens take the engine well over 100 ms (one Python step per token); the client gives up after 20 ms
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.02))
    deadline = time.monotonic() + 15
    while (metrics := _metrics(server))["pagedc:kv_cache_usage_perc"] > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics["pagedc:kv_cache_usage_perc"] == 0 and metrics["pagedc:num_requests_running"] == 0
    assert metrics['pagedc:request_success_total{"finished_reason": "abort"}'] == aborted + 1

# -- bad requests --------------------------------------------------------------------------------
TOO_LONG = list(range(3, 300)) * 4           # 1188 tokens; the pool holds 1024
BAD_REQUESTS = [
    ("completions", b'{"model": "tiny.paged", "prompt": "hi", ', 400, None),                     # malformed JSON
    ("completions", b'', 400, None),                                                              # no body
    ("completions", {"model": MODEL, "prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),   # wrong type
    ("completions", {"model": MODEL, "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("completions", {"model": MODEL, "prompt": 12}, 400, "prompt"),
    ("completions", {"model": MODEL, "prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),       # negative
    ("completions", {"model": MODEL, "prompt": "hi", "max_tokens": 5000}, 400, "max_tokens"),     # over the limit
    ("completions", {"model": MODEL, "prompt": TOO_LONG}, 400, "prompt"),                         # longer than the pool
    ("completions", {"model": MODEL, "prompt": [5, 999999]}, 400, "prompt"),                      # not in the vocab
    ("completions", {"model": MODEL, "prompt": "hi", "n": 0}, 400, "n"),
    ("completions", {"model": MODEL, "prompt": "hi", "logprobs": 2}, 400, "logprobs"),           # not implemented
    ("completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),                            # unknown model
    ("completions", {"model": MODEL}, 400, "prompt"),                                             # missing field
    ("chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 7}]}, 400, "messages.0.content"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x" * 3000}]}, 400, "prompt"),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
     400, "max_completion_tokens"),
    ("nothing-here", {}, 404, None),
]


@pytest.mark.parametrize("path, body, status, param", BAD_REQUESTS)
def test_a_bad_request_gets_its_status_and_error_json_and_the_next_one_succeeds(server, client, path, body,
                                                                               status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/{path}", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=3).choices[0].finish_reason


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4096)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server.url}/health").status_code == 200
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"pagedc:num_requests_running", "pagedc:num_requests_waiting", "pagedc:kv_cache_usage_perc",
            "pagedc:prefix_cache_hit_rate", "pagedc:num_preemptions", "pagedc:prompt_tokens",
            "pagedc:generation_tokens", "pagedc:time_to_first_token_seconds",
            "pagedc:inter_token_latency_seconds"} <= names
    metrics = _metrics(server)
    assert metrics["pagedc:prompt_tokens_total"] > 0 and metrics["pagedc:generation_tokens_total"] > 0
    assert metrics["pagedc:time_to_first_token_seconds_count"] > 0


# -- servers of their own: --api-key, a model without a chat template, signals --------------------
def test_api_key_401_without_or_with_a_wrong_key_200_with_it_and_sigint_exits_0(served_model):
    server = ServerProcess(served_model, "--api-key", "s3cret", "--served-model-name", "tiny")
    try:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(f"{server.url}/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).choices[0].text is not None
        assert httpx.get(f"{server.url}/health").status_code == 200          # open, as in vLLM
        stream = client.completions.create(model="tiny", prompt="hi", max_tokens=200, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))
        assert server.stop(signal.SIGINT) == 0, server.output()
        chunks = list(stream)                 # in-flight requests finish before the server exits
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        server.kill()


def test_without_a_chat_template_chat_is_400_completions_work_and_sigterm_exits_0(served_model, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(served_model, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    server = ServerProcess(plain, "--shutdown-timeout", "0.2")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
        assert client.completions.create(model="plain", prompt="hi", max_tokens=2).choices[0].text is not None
        stream = client.completions.create(model="plain", prompt="hi", max_tokens=1000, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))
        assert server.stop(signal.SIGTERM) == 0, server.output()
        chunks = list(stream)                 # it outlived --shutdown-timeout: aborted, the stream still closed
        assert chunks[-1].choices[0].finish_reason == "abort"
        assert "Traceback" not in server.output() and "ERROR" not in server.output()
    finally:
        server.kill()
