"""The `pagedc` command line.

Exit codes: 0 ok, 1 failure (a model pagedc cannot handle, a failed check),
2 usage (bad options, missing files), 130 interrupted (Ctrl-C). Results go to
stdout, progress and diagnostics to stderr; user mistakes never show a traceback:
every `PagedcError` becomes one `Error: ...` line and exit 1, here and nowhere
else. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging

import click

from pagedc import __version__
from pagedc.cli.bench_cmd import bench_command
from pagedc.cli.compile_cmd import compile_command
from pagedc.entry import EXIT_INTERRUPTED
from pagedc.errors import PagedcError
from pagedc.cli.generate_cmd import generate_command
from pagedc.cli.inspect_cmd import inspect_command
from pagedc.cli.serve_cmd import serve_command
from pagedc.cli.verify_cmd import verify_command

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class PagedcGroup(click.Group):
    """Turns a PagedcError from any command into `Error: ...` and exit 1; Ctrl-C into a quiet exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PagedcError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo(err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(cls=PagedcGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="pagedc")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does to stderr.")
def main(verbose: bool) -> None:
    """Rewrite an ONNX LLM decoder with a dense KV cache into paged attention.

    \b
    Examples:
      pagedc inspect model.onnx           # list the KV-cache attention layers
      pagedc inspect model.onnx --json    # the same, for scripts
      pagedc compile model.onnx           # paged model + manifest in model.paged/
      pagedc generate model.paged --prompt-ids 1,2,3 --max-new-tokens 32
      pagedc verify model.paged model.onnx   # paged vs dense logits, step by step
      pagedc bench model.paged model.onnx    # prefill and decode times, side by side
      pagedc serve model.paged            # OpenAI-compatible HTTP server on 127.0.0.1:8000
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="pagedc: %(message)s")


main.add_command(inspect_command)
main.add_command(compile_command)
main.add_command(generate_command)
main.add_command(verify_command)
main.add_command(bench_command)
main.add_command(serve_command)
