"""One compiled MIGraphX program (.mxr): its parameters checked against the manifest, and a run function.

MIGraphX runs only what it was compiled for: every parameter's name, dims and
dtype must match what is fed (DESIGN.md §7), so a mismatch is found at load
time, with the artifact and parameter named, not as a failure inside run().

Python API used (ROCm/AMDMIGraphX src/py/migraphx_py.cpp): `migraphx.load(path,
format="msgpack")`, `program.get_parameter_shapes()` -> {name: shape} with
`shape.lens()` and `shape.type_string()` ("float_type" …), `program.run({name:
buffer})` (wraps each buffer's memory, no copy) -> list of arguments in the
graph's output order (buffer protocol: `np.asarray` views them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from pagedc.errors import ModelError
from pagedc.manifest import Artifact
from pagedc.runtime.sessions.mxr_weights import ProgramWeights

RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

# shape::type_string() names (MIGRAPHX_SHAPE_VISIT_TYPES) -> numpy dtype names
MIGRAPHX_DTYPES = {
    "bool_type": "bool", "half_type": "float16", "float_type": "float32", "double_type": "float64",
    "uint8_type": "uint8", "int8_type": "int8", "uint16_type": "uint16", "int16_type": "int16",
    "int32_type": "int32", "int64_type": "int64", "uint32_type": "uint32", "uint64_type": "uint64",
    "bf16_type": "bfloat16",
}
OUTPUT_PARAMETER_MARK = "#output_"   # offload_copy=False adds output buffers as parameters ("main:#output_0")


class MxrProgramError(ModelError):
    """A .mxr that cannot be loaded or does not match its manifest entry; the message says what to do."""


def parameter_specs(program) -> dict[str, tuple[list[int], str]]:
    """{parameter name: (dims, numpy dtype name)} of a MIGraphX program's inputs."""
    specs = {}
    for name, shape in program.get_parameter_shapes().items():
        if OUTPUT_PARAMETER_MARK not in name:
            type_name = shape.type_string()
            specs[name] = ([int(d) for d in shape.lens()], MIGRAPHX_DTYPES.get(type_name, type_name))
    return specs


def parameter_problems(specs: dict[str, tuple[list[int], str]], artifact: Artifact, check_dtypes: bool = True,
                       weights: dict[str, tuple[list[int], str]] | None = None) -> list[str]:
    """One line per difference between a program's parameters and the manifest's record of the artifact
    (its inputs, and the `weights` every program may take: {name: (dims, dtype)} of weights.bin)."""
    weights = weights or {}
    problems = [f"the manifest lists input '{n}', the program has no such parameter" for n in artifact.inputs
                if n not in specs]
    problems += [f"the program has parameter '{n}' {specs[n][0]} that the manifest does not list" for n in specs
                 if n not in artifact.inputs and n not in weights]
    expected = {name: ([int(d) for d in dims], artifact.dtypes.get(name)) for name, dims in artifact.inputs.items()}
    expected.update({name: spec for name, spec in weights.items() if name not in artifact.inputs})
    for name in expected.keys() & specs.keys():
        (dims, dtype), (want_dims, want_dtype) = specs[name], expected[name]
        if dims != list(want_dims):
            problems.append(f"parameter '{name}' has dims {dims}, the manifest says {list(want_dims)}")
        if check_dtypes and dtype != want_dtype:
            problems.append(f"parameter '{name}' has dtype {dtype}, the manifest says {want_dtype}")
    return problems


def load_program(migraphx: ModuleType, path: Path, artifact: Artifact, weights: ProgramWeights | None = None):
    """migraphx.load the artifact and check its parameters against the manifest (and the weights file)."""
    if not path.is_file():
        raise MxrProgramError(f"{path}: the manifest lists this artifact but the file is missing; recompile")
    try:
        program = migraphx.load(str(path), format="msgpack")
    except Exception as err:   # MIGraphX raises RuntimeError subclasses from C++
        raise MxrProgramError(f"{path}: MIGraphX cannot load it ({err}); recompile with this MIGraphX") from None
    problems = parameter_problems(parameter_specs(program), artifact, weights=weights.specs() if weights else None)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MxrProgramError(f"{path} does not match manifest.json ({len(problems)} problem(s)):\n{lines}\n"
                              "The artifact and manifest come from different compiles; recompile the directory")
    return program


def program_runner(migraphx: ModuleType, program, weights: ProgramWeights | None = None) -> RunFn:
    """run(inputs) -> outputs as NumPy views of MIGraphX's result buffers, in the program's output order.

    NOTE: `program.run` takes any buffer and wraps its memory without a copy or a reference
    (migraphx.argument(buffer) keeps only the pointer), so every array fed must stay alive until
    run returns: the dict passed holds them, and the closure holds the weights' memory map
    (a wrapped view of it, once freed, made run() read unmapped memory: SIGSEGV).
    """
    names = parameter_specs(program).keys()
    fixed = {name: array for name, array in (weights.arrays.items() if weights else ()) if name in names}

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {**fixed, **{name: np.ascontiguousarray(array) for name, array in inputs.items()}}
        return [_owned(np.asarray(result), feeds) for result in program.run(feeds)]

    return run


def _owned(result: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """A result that keeps its memory alive: the fed array itself where the result *is* a fed buffer.

    NOTE: MIGraphX may return an input's memory as an output (GroupQueryAttention's present_key is
    its past_key buffer, updated in place). The returned argument does not own that memory, so a
    view of it dies with the fed array: a caller that kept only the output read freed memory.
    """
    for fed in feeds.values():
        if np.may_share_memory(result, fed):
            same = result.shape == fed.shape and result.ctypes.data == fed.ctypes.data and result.dtype == fed.dtype
            return fed if same else result.copy()
    return result
