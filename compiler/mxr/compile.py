"""The MIGraphX backend of `pagedc compile`: one .mxr per static shape bucket.

    plan = plan_mxr(...)            lower every bucket (paged, and dense with --emit-standard), check each
                                    for MIGraphX's parser: pure Python, fails before anything is written
    import_migraphx()               (the driver, so a missing MIGraphX also fails before writing)
    write_mxr(plan, staging, ...)   per bucket, in a child process (pagedc.mxr.child, pagedc.mxr.worker):
                                    static .onnx -> migraphx.parse_onnx(path, map_input_dims)
                                    -> [quantize_fp16] -> compile(get_target(device), offload_copy)
                                    -> migraphx.save(msgpack); the parent checks the parameters
                                    against the lowering; a crash is an error naming bucket and step

The static .onnx files go to STAGING/.lowered and are deleted after their
program is saved; their weights are the source's data file, symlinked beside
them, never copied or loaded.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx_ir as ir

from pagedc.errors import BackendError
from pagedc.manifest import Artifact
from pagedc.model_file import load_model
from pagedc.mxr.check import check_for_migraphx
from pagedc.mxr.child import MxrChildError, Worker, run_in_child
from pagedc.mxr.lowering import Bucket, buckets_for, lower_paged
from pagedc.mxr.standard import lower_standard, standard_note, standard_sites
from pagedc.mxr.weights import WEIGHTS_FILE, Weights, weight_tensors, weights_to_inputs, write_weights
from pagedc.mxr.worker import CompileJob, compile_bucket
from pagedc.runtime.sessions.mxr_pools import step_pool_blocks
from pagedc.runtime.sessions.mxr_program import parameter_problems

if TYPE_CHECKING:
    from pagedc.build.compile import CompileOptions

DEFAULT_MAX_CONTEXT = 2048
LOWERED_DIR = ".lowered"


class MxrCompileError(BackendError):
    """A MIGraphX compile that cannot proceed; the message names the bucket and what to do."""


@dataclass
class LoweredBucket:
    bucket: Bucket
    model: ir.Model                     # static: every input's dims fixed, shapes folded
    shapes: dict[str, list[int]]        # input name -> static dims (map_input_dims)
    path: str                           # artifact file, e.g. "decode_b1.mxr", "standard_decode_b1.mxr"
    weight_names: list[str] = field(default_factory=list)   # initializers made parameters (pagedc.mxr.weights)


@dataclass
class MxrPlan:
    max_context: int
    paged: list[LoweredBucket]
    standard: list[LoweredBucket] = field(default_factory=list)
    standard_note: dict = field(default_factory=dict)
    weights: Weights = field(default_factory=dict)          # name -> tensor, fed from weights.bin
    weights_note: dict = field(default_factory=dict)        # manifest backend_options["weights"], once written


def plan_mxr(source: Path, model: ir.Model, num_blocks: int, options: CompileOptions,
             progress: Callable[[str], None]) -> MxrPlan:
    """Lower and check every bucket; raises MxrCompileError listing every problem MIGraphX would hit."""
    max_context = resolve_max_context(options, num_blocks)
    max_blocks = math.ceil(max_context / options.block_size)
    buckets = buckets_for(options.batches, options.prefill_lens)
    progress(f"lowering {len(buckets)} bucket(s) to static shapes: {', '.join(b.name for b in buckets)} "
             f"(max_context {max_context} = {max_blocks} blocks of {options.block_size})")
    plan = MxrPlan(max_context, [])
    is_combined = options.layout == "combined"
    for b in buckets:   # step pools (pagedc.runtime.sessions.mxr_pools): the bucket's blocks, not the whole pool
        static = lower_paged(model, b, max_blocks=max_blocks,
                             num_blocks=step_pool_blocks(b.batch, max_blocks, is_combined))
        plan.paged.append(LoweredBucket(b, static, _input_dims(static), f"{b.name}.mxr"))
    if options.emit_standard:
        dense = load_model(source)
        sites = standard_sites(dense)
        progress(f"lowering the dense model ({sites[0].form}) to the same buckets (--emit-standard)")
        for b in buckets:
            static, shapes = lower_standard(dense, sites, b, max_context)
            plan.standard.append(LoweredBucket(b, static, shapes, f"standard_{b.name}.mxr"))
        plan.standard_note = standard_note(sites, max_context)
    if shares_weights(options):
        plan.weights = weight_tensors(model)
        if options.emit_standard:
            plan.weights = weight_tensors(dense, plan.weights)
        for item in plan.paged + plan.standard:
            item.weight_names = weights_to_inputs(item.model, plan.weights, half=options.fp16)
    _check(plan.paged + plan.standard, progress)
    return plan


def shares_weights(options: CompileOptions) -> bool:
    """Whether the programs take the weights as parameters from one weights.bin (pagedc.mxr.weights).

    NOTE: not for --device gpu with offload_copy (the default there): an offload_copy program copies
    every parameter to the device on every run, so shared weights would cross the bus each step;
    embedded, they are uploaded once with the program. The ref and cpu targets read host memory.
    """
    return options.device != "gpu" or not options.offload_copy


def resolve_max_context(options: CompileOptions, num_blocks: int) -> int:
    """--max-context, or max(2048, longest prefill) capped by what one sequence can hold in the pool."""
    per_token_blocks = 2 if options.layout == "combined" else 1
    capacity = (num_blocks - 1) // per_token_blocks * options.block_size
    longest = max(options.prefill_lens)
    max_context = options.max_context or min(max(DEFAULT_MAX_CONTEXT, longest), capacity)
    if max_context < longest:
        given = f"--max-context {max_context}" if options.max_context else f"the pool's {capacity} tokens per sequence"
        raise MxrCompileError(f"{given} is shorter than --prefill-len {longest}: a prefill bucket must fit one "
                              "sequence's context; lower --prefill-len or raise --max-context / --kv-memory")
    if max_context > capacity:
        raise MxrCompileError(f"--max-context {max_context} exceeds what one sequence can hold in the pool "
                              f"({num_blocks} blocks of {options.block_size}: {capacity} tokens); "
                              "raise --kv-memory / --num-blocks or lower --max-context")
    return max_context


def _input_dims(model: ir.Model) -> dict[str, list[int]]:
    return {v.name: [int(d) for d in v.shape] for v in model.graph.inputs if not v.is_initializer()}


def _check(lowered: list[LoweredBucket], progress: Callable[[str], None]) -> None:
    problems = [f"{item.bucket.name} ({item.path}): {p}" for item in lowered for p in check_for_migraphx(item.model)]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MxrCompileError(f"MIGraphX's ONNX parser would reject the lowered model ({len(problems)} "
                              f"problem(s)):\n{lines}")
    progress(f"checked {len(lowered)} lowered graph(s) for MIGraphX's ONNX parser: no problems")


def write_mxr(plan: MxrPlan, staging: Path, options: CompileOptions, progress: Callable[[str], None],
              worker: Worker = compile_bucket) -> tuple[list[Artifact], list[Artifact]]:
    """Compile every lowered bucket into STAGING/*.mxr; returns (paged artifacts, standard artifacts).

    Each bucket's MIGraphX steps run in a child process (pagedc.mxr.child): a crash inside MIGraphX
    raises MxrCompileError naming the bucket, the step and the signal; STAGING/.lowered is removed
    either way (the caller removes STAGING).
    """
    work = staging / LOWERED_DIR
    work.mkdir()
    weight_dtypes: dict[str, str] = {}     # what the programs take (quantize_fp16 may change it)
    try:
        paged = [_compile_bucket(plan, item, staging, work, options, progress, worker, weight_dtypes)
                 for item in plan.paged]
        standard = [_compile_bucket(plan, item, staging, work, options, progress, worker, weight_dtypes)
                    for item in plan.standard]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(dict.fromkeys(n for item in plan.paged + plan.standard for n in item.weight_names))
    if names:
        plan.weights_note = write_weights(plan.weights, names, weight_dtypes, staging / WEIGHTS_FILE)
        progress(f"wrote {WEIGHTS_FILE}: {len(names)} weight(s), taken as parameters by every program")
    return paged, standard


def _compile_bucket(plan: MxrPlan, item: LoweredBucket, staging: Path, work: Path, options: CompileOptions,
                    progress: Callable[[str], None], worker: Worker, weight_dtypes: dict[str, str]) -> Artifact:
    onnx_path = work / item.path.replace(".mxr", ".onnx")
    write_lowered(item.model, onnx_path)
    progress(f"MIGraphX: parsing {onnx_path.name}, compiling {item.bucket.name} for {options.device}"
             + (" (fp16)" if options.fp16 else ""))
    job = CompileJob(str(onnx_path), str(staging / item.path), item.shapes, options.device, options.fp16,
                     options.offload_copy)
    try:
        specs = run_in_child(worker, job, f"{item.bucket.name} ({item.path})")
    except MxrChildError as err:
        raise MxrCompileError(str(err)) from None
    weights = {name: ([int(d) for d in plan.weights[name].shape], plan.weights[name].dtype.numpy().name)
               for name in item.weight_names}
    artifact = _artifact(item, specs, options.fp16, weights)
    weight_dtypes.update({name: specs[name][1] for name in item.weight_names if name in specs})
    onnx_path.unlink()
    progress(f"wrote {item.path}")
    return artifact


def _artifact(item: LoweredBucket, specs: dict[str, tuple[list[int], str]], fp16: bool,
              weights: dict[str, tuple[list[int], str]]) -> Artifact:
    """The manifest entry: the lowering's shapes, checked against the compiled program's parameters."""
    graph = item.model.graph
    dtypes = {v.name: v.dtype.numpy().name for v in graph.inputs if v.name in item.shapes}
    artifact = Artifact(item.path, item.bucket.phase, item.shapes, dtypes, [v.name for v in graph.outputs])
    problems = parameter_problems(specs, artifact, check_dtypes=not fp16, weights=weights)
    if problems:
        raise MxrCompileError(f"bucket {item.bucket.name}: MIGraphX's program does not take the lowered inputs: "
                              + "; ".join(problems))
    if fp16:   # quantize_fp16 decides which parameters become half; the manifest records what the program takes
        artifact.dtypes.update({name: dtype for name, (_, dtype) in specs.items() if name in artifact.inputs})
    return artifact


def write_lowered(model: ir.Model, path: Path, *, copy_weights: bool = False) -> None:
    """Save a lowered model; its external weights stay in the source's files, symlinked beside `path`.

    NOTE: symlinks, never hard links: onnx_ir refuses external data files with several hard links
    (a "hard link attack"), so a hard link would make the source model unloadable while it exists.
    ONNX Runtime refuses data files resolving outside the model's directory, so `copy_weights`
    (tests, small models) copies them instead; MIGraphX reads through the symlink.
    """
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            link = path.parent / tensor.location
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                target = (Path(tensor.base_dir) / tensor.location).resolve()
                if copy_weights:
                    shutil.copyfile(target, link)
                else:
                    link.symlink_to(target)
    ir.save(model, str(path))   # external tensors keep their location and offsets; nothing is loaded
