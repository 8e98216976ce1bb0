"""One compiled MIGraphX program (.mxr): its parameters checked against the manifest, and a run function.

MIGraphX runs only what it was compiled for: every parameter's name, dims and
dtype must match what is fed (DESIGN.md §7), so a mismatch is found at load
time, with the artifact and parameter named, not as a failure inside run().

Python API used (ROCm/AMDMIGraphX src/py/migraphx_py.cpp): `migraphx.load(path,
format="msgpack")`, `program.get_parameter_shapes()` -> {name: shape} with
`shape.lens()` and `shape.type_string()` ("float_type" …), `migraphx.argument(buffer)`
(wraps the buffer's memory, no copy), `program.run({name: argument})` -> list
of arguments in the graph's output order (buffer protocol: `np.asarray` views them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from pagedc.errors import ModelError
from pagedc.manifest import Artifact

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


def parameter_problems(specs: dict[str, tuple[list[int], str]], artifact: Artifact,
                       check_dtypes: bool = True) -> list[str]:
    """One line per difference between a program's parameters and the manifest's record of the artifact."""
    problems = [f"the manifest lists input '{n}', the program has no such parameter" for n in artifact.inputs
                if n not in specs]
    problems += [f"the program has parameter '{n}' {specs[n][0]} that the manifest does not list" for n in specs
                 if n not in artifact.inputs]
    for name in artifact.inputs.keys() & specs.keys():
        dims, dtype = specs[name]
        if dims != [int(d) for d in artifact.inputs[name]]:
            problems.append(f"parameter '{name}' has dims {dims}, the manifest says {artifact.inputs[name]}")
        if check_dtypes and dtype != artifact.dtypes.get(name):
            problems.append(f"parameter '{name}' has dtype {dtype}, the manifest says {artifact.dtypes.get(name)}")
    return problems


def load_program(migraphx: ModuleType, path: Path, artifact: Artifact):
    """migraphx.load the artifact and check its parameters against the manifest."""
    if not path.is_file():
        raise MxrProgramError(f"{path}: the manifest lists this artifact but the file is missing; recompile")
    try:
        program = migraphx.load(str(path), format="msgpack")
    except Exception as err:   # MIGraphX raises RuntimeError subclasses from C++
        raise MxrProgramError(f"{path}: MIGraphX cannot load it ({err}); recompile with this MIGraphX") from None
    problems = parameter_problems(parameter_specs(program), artifact)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MxrProgramError(f"{path} does not match manifest.json ({len(problems)} problem(s)):\n{lines}\n"
                              "The artifact and manifest come from different compiles; recompile the directory")
    return program


def program_runner(migraphx: ModuleType, program) -> RunFn:
    """run(inputs) -> outputs as NumPy views of MIGraphX's result buffers, in the program's output order."""

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        # migraphx.argument wraps each array's memory (no copy); the arrays outlive the call.
        arguments = {name: migraphx.argument(np.ascontiguousarray(array)) for name, array in inputs.items()}
        return [np.asarray(result) for result in program.run(arguments)]

    return run
