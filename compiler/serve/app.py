"""The HTTP routes of `pagedc serve` (FastAPI), over one EngineThread.

    POST /v1/completions        prompt (text, texts, token ids) -> text; stream or not
    POST /v1/chat/completions   messages -> the chat template -> text; stream or not
    GET  /v1/models             the one served model
    GET  /health                200 while the engine thread runs, 503 once it is stopping
    GET  /metrics               Prometheus text format (pagedc.serve.metrics)

With an API key set, every /v1 route needs `Authorization: Bearer KEY` (401
otherwise, in OpenAI's error shape); /health and /metrics stay open, as in
vLLM. Bodies are read and validated by pagedc.serve.protocol, so every
client mistake is a 400 with OpenAI's error JSON and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from pagedc.errors import RequestError
from pagedc.runtime import SamplingParams
from pagedc.serve.engine_thread import EngineThread
from pagedc.serve.generation import Generation, GenerationParams, Limits
from pagedc.serve.model_text import ModelText
from pagedc.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse
from pagedc.serve.responses import ResponseWriter

log = logging.getLogger(__name__)


@dataclass
class ServeState:
    thread: EngineThread
    text: ModelText
    model_name: str
    limits: Limits
    api_key: str | None = None
    created: int = 0


def build_app(state: ServeState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.thread.start(asyncio.get_running_loop())
        yield
        state.thread.stop()

    app = FastAPI(title="pagedc serve", lifespan=lifespan)
    _add_error_handlers(app)
    guard = [Depends(_key_check(state.api_key))]

    @app.get("/health")
    async def health():
        if not state.thread.is_alive:
            raise ApiError(503, "the engine thread is not running (shutting down)", type="server_error")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.thread.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guard)
    async def models():
        return {"object": "list", "data": [_model_card(state)]}

    _add_generation_routes(app, state, guard)
    return app


def _add_generation_routes(app: FastAPI, state: ServeState, guard: list) -> None:
    @app.post("/v1/completions", dependencies=guard)
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        _check_model(state, body.model)
        prompts = _completion_prompts(state.text, body.prompt)
        return await _respond(request, state, body, "completion", prompts, body.max_tokens)

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat_completions(request: Request):
        body = parse(ChatCompletionRequest, await request.body())
        _check_model(state, body.model)
        if state.text.chat_template is None:
            raise ApiError(400, f"model {state.model_name!r} has no chat template (no chat_template in its "
                           "tokenizer_config.json); use /v1/completions, or restart with --chat-template FILE")
        prompt = state.text.chat_template.render([m.for_template() for m in body.messages])
        prompts = [state.text.encode(prompt, add_special_tokens=False)]
        return await _respond(request, state, body, "chat", prompts, body.max_new_tokens)


async def _respond(request: Request, state: ServeState, body, kind: str, prompts: list[list[int]],
                   max_tokens: int | None):
    params = _generation_params(state, body, max_tokens)
    generation = Generation.start(state.thread, state.text.decode, prompts, params, state.limits)
    writer = ResponseWriter(kind, state.model_name, bool(body.stream_options and body.stream_options.include_usage))
    if body.stream:
        return _GenerationStream(generation, writer.stream(generation), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        return JSONResponse(await _unless_disconnected(request, writer.collect(generation)))
    finally:
        generation.abort()


class _GenerationStream(StreamingResponse):
    """A stream that aborts its samples however it ends, even when the client left before the first chunk
    (the body's generator then never starts, so its own `finally` never runs)."""

    def __init__(self, generation: Generation, content, **kwargs):
        super().__init__(content, **kwargs)
        self._generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._generation.abort()


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it (and so aborting its samples) if the client goes away first."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ApiError(499, "the client closed the connection")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _generation_params(state: ServeState, body, max_tokens: int | None) -> GenerationParams:
    defaults = state.text.sampling_defaults
    temperature = body.temperature if body.temperature is not None else defaults.get("temperature", 1.0)
    top_p = body.top_p if body.top_p is not None else defaults.get("top_p", 1.0)
    top_k = body.top_k if body.top_k is not None else defaults.get("top_k", 0)
    sampling = SamplingParams(float(temperature), max(int(top_k), 0), float(top_p), body.seed)
    eos_ids = frozenset() if body.ignore_eos else state.text.eos_token_ids
    stop_ids = eos_ids | frozenset(body.stop_token_ids or ())
    return GenerationParams(max_tokens, body.n, sampling, tuple(body.stop_strings()), stop_ids)


def _completion_prompts(text: ModelText, prompt) -> list[list[int]]:
    """str | [str] | [int] | [[int]] -> token-id prompts."""
    if isinstance(prompt, str):
        return [text.encode(prompt, add_special_tokens=True)]
    if isinstance(prompt[0], str):
        return [text.encode(p, add_special_tokens=True) for p in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _check_model(state: ServeState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise ApiError(404, f"the model `{model}` does not exist; this server serves `{state.model_name}` "
                            "(GET /v1/models)", param="model", code="model_not_found")


def _model_card(state: ServeState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "pagedc",
            "max_model_len": state.limits.max_model_len}


def _key_check(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            problem = "no API key was given" if not given else "the API key is not valid"
            raise ApiError(401, f"{problem}; send `Authorization: Bearer KEY` with the server's --api-key",
                           code="invalid_api_key")
    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestError)        # e.g. the chat template refused the messages
    async def request_error(request: Request, err: RequestError):
        return JSONResponse(ApiError(400, str(err)).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(ApiError(err.status_code, message).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        body = ApiError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body()
        return JSONResponse(body, status_code=500)

