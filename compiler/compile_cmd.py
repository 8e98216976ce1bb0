"""`pagedc compile`: write the paged model and its manifest."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pagedc.compile import CompileError, CompileOptions, compile_model
from pagedc.model_file import ModelFileError
from pagedc.passes.paged import LAYOUTS, PagedRewriteError

_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


class ByteSize(click.ParamType):
    """A size such as 2GiB, 512MiB or 1000000."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(value), re.IGNORECASE)
        if not match:
            self.fail(f"{value!r} is not a size; write e.g. 2GiB, 512MiB or 1000000", param, ctx)
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


@click.command("compile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path),
              help="Output directory [default: MODEL's name + .paged, next to MODEL].")
@click.option("--block-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Tokens per KV block.")
@click.option("--num-blocks", type=click.IntRange(min=2), help="Blocks per pool, null block 0 included.")
@click.option("--kv-memory", type=ByteSize(), default="256MiB", show_default=True,
              help="Memory for all KV pools together; sets the number of blocks unless --num-blocks is given.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="separate", show_default=True,
              help="One K and one V pool per layer, or one combined pool holding both.")
@click.option("--target", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="What to compile for: ONNX Runtime.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def compile_command(model: Path, out_dir: Path | None, block_size: int, num_blocks: int | None,
                    kv_memory: int, layout: str, target: str, force: bool) -> None:
    """Rewrite MODEL's attention to paged attention and write it with a manifest.

    Writes OUT/model.onnx (weights in OUT/model.onnx.data) and OUT/manifest.json,
    atomically: on failure nothing is left behind. Prints OUT on stdout.

    \b
    Examples:
      pagedc compile model.onnx                          # -> model.paged/
      pagedc compile model.onnx -o out --block-size 32 --kv-memory 2GiB
      pagedc compile model.onnx --layout combined --num-blocks 1024
    """
    out_dir = out_dir or model.with_name(model.stem + ".paged")
    options = CompileOptions(block_size=block_size, layout=layout, num_blocks=num_blocks,
                             kv_memory=kv_memory, target=target, overwrite=force)
    try:
        compile_model(model, out_dir, options, progress=lambda msg: click.echo(f"pagedc: {msg}", err=True))
    except (ModelFileError, CompileError, PagedRewriteError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(out_dir))
