"""Start `pagedc serve`: load the engine and the tokenizer files, then run uvicorn until a signal.

    engine = Engine.from_manifest(DIR) -> ModelText.load(DIR) -> build_app -> uvicorn.Server.run()

Shutdown on SIGINT / SIGTERM (uvicorn's own handling): stop accepting, let
in-flight requests finish for up to `shutdown_timeout` seconds, then abort
the rest (their streams end with finish_reason "abort" and `[DONE]`), stop
the engine thread, return; uvicorn's own cancel of tasks comes only
SHUTDOWN_BACKSTOP_S later, for a handler stuck elsewhere. uvicorn re-raises
the signal it caught once it is done; handlers installed here absorb that,
so the process exits 0 after a clean shutdown.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pagedc.manifest import Manifest
from pagedc.runtime import Engine, EngineOptions
from pagedc.serve.app import ServeState, build_app
from pagedc.serve.engine_thread import EngineThread
from pagedc.serve.generation import Limits
from pagedc.serve.metrics import ServerMetrics
from pagedc.serve.model_text import ModelText

SHUTDOWN_BACKSTOP_S = 5.0


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None       # default: the directory's name
    engine: EngineOptions = EngineOptions()
    chat_template: Path | None = None          # overrides the model's
    shutdown_timeout: float = 10.0
    log_level: str = "warning"


def serve(directory: Path, options: ServeOptions, progress: Callable[[str], None]) -> None:
    directory = Path(directory)
    directory = directory if directory.is_dir() else directory.parent
    progress(f"loading {directory}")
    engine = Engine(Manifest.read(directory), directory, engine_options=options.engine)
    text = ModelText.load(directory, options.chat_template)
    name = options.served_model_name or directory.name
    metrics = ServerMetrics(name)
    state = ServeState(EngineThread(engine, metrics), text, name, model_limits(engine, text), options.api_key,
                       int(time.time()))
    if text.chat_template is None:
        progress("no chat template in tokenizer_config.json: /v1/chat/completions will answer 400")

    import uvicorn

    config = uvicorn.Config(build_app(state), host=options.host, port=options.port, log_level=options.log_level,
                            timeout_graceful_shutdown=options.shutdown_timeout + SHUTDOWN_BACKSTOP_S,
                            access_log=False)
    server = _server_class(uvicorn)(config, lambda: state.thread.abort_all(), options.shutdown_timeout)
    progress(f"serving {name} on http://{options.host}:{options.port}/v1 "
             f"(max_model_len {state.limits.max_model_len}; Ctrl-C to stop)")
    for sig in (signal.SIGINT, signal.SIGTERM):       # absorbs the signal uvicorn re-raises after shutdown
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise OSError(f"could not start the HTTP server on {options.host}:{options.port} (see the log above)")
    progress("stopped")


def _server_class(uvicorn):
    class Server(uvicorn.Server):
        """uvicorn's server, aborting the requests still running `grace_s` after shutdown begins."""

        def __init__(self, config, abort_all, grace_s: float):
            super().__init__(config)
            self._abort_all, self._grace_s = abort_all, grace_s

        async def shutdown(self, sockets=None) -> None:
            asyncio.get_running_loop().call_later(self._grace_s, self._abort_all)
            await super().shutdown(sockets)

    return Server


def model_limits(engine: Engine, text: ModelText) -> Limits:
    """max_model_len as the engine enforces it: the model's positions, the compiled context, the pool."""
    return Limits(engine.max_model_len, engine.manifest.vocab_size or text.vocab_size, engine.max_model_len_reason)
