"""The compile driver: dense model.onnx -> OUT/{model.onnx + model.onnx.data | <bucket>.mxr ..., manifest.json}.

    load (graph only) -> rewrite_to_paged (lm_head on each row's last new token
    unless --logits all) -> size the pools
    [mxr: lower + check every bucket -> import migraphx] -> write into a
    staging directory -> rename it to OUT

Everything is written into `OUT.tmp-*` next to OUT and renamed at the end, so
a failed compile leaves nothing behind and an existing OUT is replaced whole.
Targets (one explicit branch where they differ):
- onnx: ONNX Runtime (CPU), one artifact with dynamic batch, sequence and
  block dims serves prefill and decode;
- mxr: MIGraphX, one static .mxr per shape bucket (pagedc.mxr.compile); every
  bucket is lowered and checked before MIGraphX is imported or anything written;
- auto: mxr when `import migraphx` works, else onnx (said on the progress stream).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx_ir as ir

from pagedc.errors import RequestError
from pagedc.manifest import Artifact, LayerPools, Manifest, bytes_per_block
from pagedc.manifest_schema import LOGITS
from pagedc.build.max_position import max_position
from pagedc.model_file import external_data_files, file_sha256, load_model
from pagedc.mxr.compile import MxrPlan, plan_mxr, write_mxr
from pagedc.build.output_dir import OutputError, check_output, commit, make_staging
from pagedc.passes.paged import RewriteReport, rewrite_to_paged
from pagedc.runtime.sessions.memory import format_bytes, total_memory
from pagedc.runtime.sessions.migraphx_import import MigraphxUnavailable, import_migraphx, is_migraphx_available
from pagedc.runtime.sessions.mxr_pools import STEP_POOLS

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
DEFAULT_KV_MEMORY = 256 * 2**20
# What `pagedc generate --prompt` and `pagedc serve` read beside the artifacts (tokenizer, chat template, eos ids).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "genai_config.json")
TARGETS = ("auto", "mxr", "onnx")
DEVICES = ("gpu", "ref", "cpu")


class CompileError(RequestError):
    """A compile option that cannot work (target, pool size); the message says why and what to do."""


@dataclass(frozen=True)
class CompileOptions:
    block_size: int = 16
    layout: str = "separate"
    num_blocks: int | None = None      # wins over kv_memory
    kv_memory: int = DEFAULT_KV_MEMORY  # bytes for all pools together
    target: str = "onnx"               # "onnx" | "mxr" | "auto" (the CLI's default)
    overwrite: bool = False
    logits: str = "last"               # "last": lm_head on each row's last new token ([B, 1, V]); "all": [B, S, V]
    # MIGraphX (target mxr) only:
    device: str = "gpu"                # migraphx.get_target(device): "gpu" | "ref" | "cpu"
    prefill_lens: tuple[int, ...] = (512,)   # one prefill bucket [B, S] per batch and length
    batches: tuple[int, ...] = (1,)          # one decode bucket [B, 1] per batch
    max_context: int | None = None     # tokens per sequence; default max(2048, longest prefill) capped by the pool
    fp16: bool = False                 # migraphx.quantize_fp16 before compiling
    offload_copy: bool = True          # program takes and returns host buffers
    emit_standard: bool = False        # also standard_*.mxr: the dense model at the same buckets

    def __post_init__(self) -> None:
        if self.logits not in LOGITS:
            raise CompileError(f"CompileOptions.logits must be one of {LOGITS}, got {self.logits!r}")


def compile_model(source: Path, out_dir: Path, options: CompileOptions,
                  progress: Callable[[str], None] = log.info) -> Manifest:
    source, out_dir = Path(source), Path(out_dir)
    target = resolve_target(options, progress)
    progress(f"loading {source} (graph only; weights stay on disk)")
    model = load_model(source)
    check_output(out_dir, source, external_data_files(model, source), options.overwrite)
    progress("rewriting attention layers to paged attention")
    model, report = rewrite_to_paged(model, block_size=options.block_size, layout=options.layout,
                                     fuse_rotary=target == "onnx", last_logits=options.logits == "last")
    progress(f"rewrote {report.num_layers} layer(s): {_rewrite_summary(report)}")
    progress(_logits_summary(report, options))
    num_blocks = _num_blocks(report, options)
    plan = plan_mxr(source, model, num_blocks, options, progress) if target == "mxr" else None
    if target == "mxr":
        _import_migraphx()   # fails before anything is written; the MIGraphX steps run in child processes
    staging = make_staging(out_dir)
    try:
        if target == "onnx":
            progress(f"writing {staging / MODEL_FILE} and its weights")
            ir.save(model, str(staging / MODEL_FILE), external_data=MODEL_FILE + ".data")
            manifest = _manifest(source, model, report, num_blocks, options)
        else:
            manifest = _mxr_manifest(source, model, report, num_blocks, options, plan,
                                     write_mxr(plan, staging, options, progress))
        manifest.write(staging)
        _copy_tokenizer(source.parent, staging, progress)
        commit(staging, out_dir)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{out_dir}: writing the output failed ({err.strerror or err}: {err.filename or ''}); "
                          "nothing was written. Free disk space or choose another -o") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"wrote {out_dir} ({num_blocks} blocks of {options.block_size} tokens, {options.layout} K/V, "
             f"{len(manifest.artifacts)} {manifest.backend} artifact(s)"
             + (f", positions up to {manifest.max_position}" if manifest.max_position else "") + ")")
    return manifest


def _rewrite_summary(report: RewriteReport) -> str:
    """"2 decomposed; rules applied: grouped attention (repeat-kv removed) on 2 layer(s)"."""
    forms = ", ".join(f"{n} {form}" for form, n in report.forms.items())
    rules = ", ".join(f"{rule} on {n} layer(s)" for rule, n in report.rules.items())
    return forms + (f"; rules applied: {rules}" if rules else "")


def _logits_summary(report: RewriteReport, options: CompileOptions) -> str:
    if report.logits == "last":
        return "logits: each row's last new token only, [B, 1, V] (--logits all: every new token)"
    if options.logits == "all":
        return "logits: every new token, [B, S, V] (--logits all)"
    return f"logits stay per token, [B, S, V]: the lm_head was not found with certainty ({report.logits_reason})"


def resolve_target(options: CompileOptions, progress: Callable[[str], None]) -> str:
    """"auto" -> "mxr" when MIGraphX imports, else "onnx"; says which. --emit-standard needs mxr."""
    target = options.target
    if target not in TARGETS:
        raise CompileError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "auto":
        target = "mxr" if is_migraphx_available() else "onnx"
        progress("target auto: " + ("MIGraphX is importable, compiling .mxr (--target mxr)" if target == "mxr" else
                                    "MIGraphX is not importable, compiling for ONNX Runtime (--target onnx)"))
    if options.emit_standard and target != "mxr":
        raise CompileError("--emit-standard writes standard_*.mxr and needs the MIGraphX target (--target mxr)")
    return target


def _import_migraphx():
    try:
        return import_migraphx()
    except MigraphxUnavailable as err:
        raise CompileError(f"--target mxr: {err}. Nothing was written.") from None


def _copy_tokenizer(source_dir: Path, staging: Path, progress: Callable[[str], None]) -> None:
    """`pagedc generate --prompt` and `pagedc serve` read these from the output; bring the source's along."""
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, staging / name)
            progress(f"copied {name}")


def _num_blocks(report: RewriteReport, options: CompileOptions) -> int:
    """Blocks per pool: --num-blocks, or as many as --kv-memory holds; refused when the machine cannot hold them."""
    per_block = bytes_per_block(report.num_layers, report.num_kv_heads, options.block_size, report.head_dim,
                                _numpy_dtype(report.kv_dtype), options.layout)
    num_blocks = options.num_blocks if options.num_blocks is not None else options.kv_memory // per_block
    given = f"--num-blocks {num_blocks}" if options.num_blocks is not None else f"--kv-memory {format_bytes(options.kv_memory)}"
    if num_blocks < 2:
        raise CompileError(f"{given} gives {num_blocks} block(s) of {per_block} bytes; need at least 2 "
                           "(block 0 is the null block)")
    total = total_memory()
    if total is not None and num_blocks * per_block > total:
        raise CompileError(f"{given}: the KV pools would take {format_bytes(num_blocks * per_block)}, this machine has "
                           f"{format_bytes(total)} of memory in all, which holds at most {total // per_block} blocks "
                           f"of {format_bytes(per_block)}; use a smaller --kv-memory or --num-blocks")
    if num_blocks * options.block_size >= 2**31:
        raise CompileError(f"{given}: {num_blocks} blocks x {options.block_size} tokens exceeds the int32 slot range "
                           f"(at most {(2**31 - 1) // options.block_size} blocks); use fewer blocks")
    return int(num_blocks)


def _manifest(source: Path, model: ir.Model, report: RewriteReport, num_blocks: int,
              options: CompileOptions, **backend_fields) -> Manifest:
    inputs = {v.name: [d if isinstance(d, int) else str(d) for d in v.shape] for v in model.graph.inputs}
    dtypes = {v.name: v.dtype.numpy().name for v in model.graph.inputs}
    logits = next((v for v in model.graph.outputs if v.name == "logits"), None)
    vocab = logits.shape[-1] if logits is not None and logits.shape is not None else None
    fields = dict(
        backend="onnxruntime", target="cpu", source_model=source.name, source_sha256=file_sha256(source),
        num_layers=report.num_layers, num_heads=report.num_heads, num_kv_heads=report.num_kv_heads,
        head_dim=report.head_dim, kv_dtype=_numpy_dtype(report.kv_dtype),
        block_size=options.block_size, num_blocks=num_blocks, layout=options.layout,
        pools=tuple(LayerPools(p.layer, p.inputs, p.outputs) for p in report.pools),   # PoolNames -> contract
        artifacts=(Artifact(MODEL_FILE, "any", inputs, dtypes),),
        vocab_size=vocab if isinstance(vocab, int) else None, max_position=max_position(model, source),
        abi=_abi_note(options.layout, report.logits), logits=report.logits,
    )
    return Manifest(**{**fields, **backend_fields})


def _mxr_manifest(source: Path, model: ir.Model, report: RewriteReport, num_blocks: int, options: CompileOptions,
                  plan: MxrPlan, artifacts: tuple[list[Artifact], list[Artifact]]) -> Manifest:
    paged, standard = artifacts
    pool = report.pools[0].inputs[0]
    backend_options = {"offload_copy": options.offload_copy, "fp16": options.fp16, "pools": STEP_POOLS}
    if plan.weights_note:
        backend_options["weights"] = plan.weights_note
    return _manifest(source, model, report, num_blocks, options, backend="migraphx", target=options.device,
                     artifacts=tuple(paged), kv_dtype=paged[0].dtypes[pool], max_context=plan.max_context,
                     backend_options=backend_options,
                     standard_artifacts=tuple(standard), standard=plan.standard_note)


def _abi_note(layout: str, logits: str) -> dict:
    combined = layout == "combined"
    return {
        "null_block": 0,
        "slot": "block_id * block_size + position % block_size",
        "block_table": "[batch, 2, max_blocks] int32: row 0 K blocks, row 1 V blocks" if combined
        else "[batch, max_blocks] int32",
        "slot_mapping": "[2, batch*seq] int32: row 0 K slots, row 1 V slots" if combined else "[batch*seq] int32",
        "context_lens": "[batch] int32: tokens in the cache after this step",
        "position_ids": "[batch, seq] int64: absolute position of each new token",
        "visible": "key j is visible to the query at position p iff j <= p and j < context_lens[b]",
        "logits": "[batch, 1, vocab]: each row's last new token (the first maximum of its position_ids)"
        if logits == "last" else "[batch, seq, vocab]: every new token",
    }


def _numpy_dtype(onnx_name: str) -> str:
    """The manifest's NumPy dtype name ("float32") of an onnx_ir element type name ("float")."""
    return ir.DataType[onnx_name.upper()].numpy().name
