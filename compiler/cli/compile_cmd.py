"""`pagedc compile`: write the paged model (ONNX Runtime or MIGraphX artifacts) and its manifest."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pagedc.build.compile import DEVICES, TARGETS, CompileOptions, compile_model
from pagedc.manifest_schema import LOGITS
from pagedc.passes.paged import LAYOUTS

_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


class ByteSize(click.ParamType):
    """A size such as 2GiB, 512MiB, 1TiB or 1000000 (KiB/MiB/GiB/TiB binary, KB/MB/GB/TB decimal)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(value), re.IGNORECASE)
        if not match:
            self.fail(f"{value!r} is not a size; write e.g. 2GiB, 512MiB, 1TiB or 1000000", param, ctx)
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
@click.option("--logits", type=click.Choice(LOGITS), default="last", show_default=True,
              help="last: the lm_head runs on each sequence's last new token only, logits [B, 1, V] (what "
                   "generation samples from; a long prefill skips most of the lm_head); all: on every new "
                   "token, logits [B, S, V] (for code that reads every position: prompt scoring, `pagedc verify` "
                   "of every prompt token). Where pagedc cannot find the lm_head "
                   "with certainty it keeps all, says why, and the manifest records which.")
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True,
              help="mxr: MIGraphX .mxr per shape bucket; onnx: one ONNX Runtime model; "
                   "auto: mxr when `import migraphx` works, else onnx.")
@click.option("--device", type=click.Choice(DEVICES), default="gpu", show_default=True,
              help="MIGraphX target to compile for (mxr).")
@click.option("--prefill-len", "prefill_lens", type=click.IntRange(min=1), multiple=True, default=(512,),
              show_default=True, help="Tokens of a prefill bucket [B, S]; repeat for several (mxr).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1,), show_default=True,
              help="Sequences of a bucket; repeat for several; each gets prefill and decode buckets (mxr).")
@click.option("--max-context", type=click.IntRange(min=1),
              help="Tokens one sequence may span (mxr) "
                   "[default: max(2048, longest --prefill-len), capped by the pool].")
@click.option("--fp16", is_flag=True, help="Quantize the MIGraphX programs to fp16 (mxr).")
@click.option("--offload-copy/--no-offload-copy", default=True, show_default=True,
              help="MIGraphX programs take and return host buffers (mxr; pagedc's runtime needs it).")
@click.option("--emit-standard", is_flag=True,
              help="Also compile the dense model at the same buckets into standard_*.mxr, for verify (mxr).")
@click.option("--force", is_flag=True, help="Replace OUT if it is an earlier compile output (or empty). "
              "Never the source model, its directory or its weights.")
def compile_command(model: Path, out_dir: Path | None, force: bool, **settings) -> None:
    """Rewrite MODEL's attention to paged attention and compile it with a manifest.

    ONNX Runtime: writes OUT/model.onnx (weights in OUT/model.onnx.data).
    MIGraphX: writes one OUT/<bucket>.mxr per static shape bucket (prefill
    [B, --prefill-len], decode [B, 1], for every --batch), after checking each
    lowered graph against MIGraphX's ONNX parser. Both write OUT/manifest.json,
    atomically: on failure nothing is left behind. Prints OUT on stdout.

    \b
    Examples:
      pagedc compile model.onnx                          # -> model.paged/ (MIGraphX if installed)
      pagedc compile model.onnx -o out --block-size 32 --kv-memory 2GiB --target onnx
      pagedc compile model.onnx --layout combined --num-blocks 1024
      pagedc compile model.onnx --logits all             # logits of every prompt token, not only the last
      pagedc compile model.onnx --target mxr --device gpu --batch 1 --batch 8 --prefill-len 128 --prefill-len 1024
      pagedc compile model.onnx --target mxr --max-context 4096 --fp16 --emit-standard
    """
    out_dir = out_dir or model.with_name(model.stem + ".paged")
    settings["prefill_lens"], settings["batches"] = tuple(settings["prefill_lens"]), tuple(settings["batches"])
    options = CompileOptions(overwrite=force, **settings)
    compile_model(model, out_dir, options, progress=lambda msg: click.echo(f"pagedc: {msg}", err=True))
    click.echo(str(out_dir))
