"""`pagedc serve`: an OpenAI-compatible HTTP server over a compiled paged model (pagedc.serve)."""

from __future__ import annotations

from pathlib import Path

import click

from pagedc.errors import PagedcError
from pagedc.manifest import ManifestError
from pagedc.runtime import EngineOptions
from pagedc.runtime.sessions.migraphx_import import MigraphxUnavailable
from pagedc.runtime.sessions.mxr_program import MxrProgramError


@click.command("serve")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="PAGEDC_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on /v1 routes (or set PAGEDC_API_KEY).")
@click.option("--served-model-name", default=None, help="Model name clients send.  [default: MODEL's directory name]")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=EngineOptions.max_num_seqs, show_default=True,
              help="Requests running at once.")
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=EngineOptions.max_num_batched_tokens,
              show_default=True, help="Tokens computed per engine step (decodes + prefill chunks).")
@click.option("--max-prefill-chunk", type=click.IntRange(min=1), default=None,
              help="Prompt tokens one request computes per step; longer prompts continue over the next steps "
                   "(chunked prefill).  [default: 256 on ONNX Runtime, the largest prefill bucket on MIGraphX]")
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A jinja2 chat template to use instead of the model's.")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds in-flight requests may take to finish after SIGINT/SIGTERM before they are aborted.")
def serve_command(model: Path, host, port, api_key, served_model_name, max_num_seqs, max_num_batched_tokens,
                  max_prefill_chunk, chat_template, shutdown_timeout) -> None:
    """Serve MODEL (a `pagedc compile` output directory) over OpenAI's HTTP API.

    Routes: POST /v1/completions, POST /v1/chat/completions (streaming or not),
    GET /v1/models, GET /health, GET /metrics (Prometheus). Needs the `serve`
    extra (pip install 'pagedc[serve]') and the model's tokenizer.json in MODEL
    (`pagedc compile` copies it, with tokenizer_config.json and its chat
    template, from beside the source model).

    \b
    Examples:
      pagedc serve model.paged
      pagedc serve model.paged --port 8080 --api-key secret --served-model-name smollm2
      curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"model": "model.paged", "prompt": "Once upon a time", "max_tokens": 32}'
    """
    try:
        from pagedc.serve.server import ServeOptions, serve
    except ImportError as err:
        raise click.UsageError(f"`pagedc serve` needs the serve extra ({err.name} is missing): "
                               "pip install 'pagedc[serve]'") from None
    options = ServeOptions(host, port, api_key, served_model_name,
                           EngineOptions(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                         max_prefill_chunk=max_prefill_chunk),
                           chat_template, shutdown_timeout)
    try:
        serve(model, options, lambda message: click.echo(f"pagedc serve: {message}", err=True))
    except (PagedcError, ManifestError, MigraphxUnavailable, MxrProgramError, OSError, ValueError) as err:
        raise click.ClickException(str(err)) from None
