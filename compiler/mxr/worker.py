"""What the MIGraphX child process does for one bucket (pagedc.mxr.child runs it).

    static .onnx ─parse_onnx(map_input_dims)─▶ program ─[quantize_fp16]─▶ compile(get_target(device),
    offload_copy) ─▶ parameter specs (returned to the parent) ─▶ migraphx.save(.mxr, msgpack)

Each step is reported before it starts, so a crash inside it is named.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagedc.mxr.child import Report
from pagedc.runtime.sessions.migraphx_import import import_migraphx
from pagedc.runtime.sessions.mxr_program import parameter_specs


@dataclass(frozen=True)
class CompileJob:
    onnx_path: str                      # the lowered static model
    mxr_path: str                       # where the compiled program goes
    shapes: dict[str, list[int]]        # map_input_dims: every input's static dims
    device: str                         # migraphx.get_target(device)
    fp16: bool
    offload_copy: bool


def compile_bucket(job: CompileJob, report: Report) -> dict[str, tuple[list[int], str]]:
    """Parse, [quantize,] compile and save one bucket; returns the program's parameter specs."""
    report("import MIGraphX for")
    migraphx = import_migraphx()
    report("parse")
    program = migraphx.parse_onnx(job.onnx_path, map_input_dims=job.shapes)
    if job.fp16:
        report("quantize to fp16")
        migraphx.quantize_fp16(program)
    report(f"get target '{job.device}' for")
    target = migraphx.get_target(job.device)
    report("compile")
    program.compile(target, offload_copy=job.offload_copy)
    specs = parameter_specs(program)
    report("save")
    migraphx.save(program, job.mxr_path, format="msgpack")
    return specs
