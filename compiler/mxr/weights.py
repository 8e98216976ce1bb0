"""Weights once: every bucket's program takes the model's weights as parameters, fed from one file.

MIGraphX's parser turns initializers into literals, so a program per bucket
embedded every weight (a 519 MB model compiled to two buckets was 1.1 GB, each
loaded separately). Instead:

    lowered bucket graphs: initializer W (float, >= MIN_WEIGHT_ELEMENTS) ─▶ graph input W [its dims]
    OUT/weights.bin:       every such W once, at 64-byte aligned offsets (the dtype the programs take)
    manifest backend_options["weights"] = {"file": "weights.bin", "tensors": {W: [offset, dims, dtype]}}
    load (pagedc.runtime.sessions.mxr_weights): one np.memmap of weights.bin, a view per W, fed to every program

Small initializers (shapes, axes, indices, scalars) stay in the graph: the
parser evaluates them. A name the standard (dense) model shares with the paged
one is stored once when both hold the same tensor; otherwise the dense one
stays embedded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

WEIGHTS_FILE = "weights.bin"
MIN_WEIGHT_ELEMENTS = 1024
ALIGN = 64
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
Weights = dict[str, ir.TensorProtocol]


def weight_tensors(model: ir.Model, known: Weights | None = None) -> Weights:
    """`known` plus the model's weights (float initializers of >= MIN_WEIGHT_ELEMENTS) not clashing with it."""
    weights = dict(known or {})
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in FLOAT_TYPES or tensor.size < MIN_WEIGHT_ELEMENTS:
            continue
        if name not in weights:
            weights[name] = tensor
    return weights


def weights_to_inputs(model: ir.Model, weights: Weights, half: bool = False) -> list[str]:
    """Turn the lowered model's initializers that are `weights` into graph inputs; returns their names.

    half (--fp16): float32 weights become float16 inputs, each followed by a Cast to float32, so the
    program takes (and weights.bin holds) half weights; quantize_fp16 then computes in half. Without
    it, a float32 parameter would be converted to half on every run.
    """
    moved = []
    for name, value in list(model.graph.initializers.items()):
        if name in weights and _same(value.const_value, weights[name]):
            model.graph.initializers.pop(name)
            value.const_value = None
            value.shape, value.dtype = ir.Shape(weights[name].shape), weights[name].dtype
            if half and value.dtype == ir.DataType.FLOAT:
                _cast_after(model.graph, value)
            if value not in model.graph.inputs:
                model.graph.inputs.append(value)
            moved.append(name)
    return moved


def _cast_after(graph: ir.Graph, value: ir.Value) -> None:
    """value becomes float16; its consumers read Cast(value, to=float32)."""
    uses = list(value.uses())
    cast = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT}, name=f"{value.name}_to_float")
    cast.outputs[0].name = f"{value.name}_float"
    cast.outputs[0].shape, cast.outputs[0].dtype = value.shape, ir.DataType.FLOAT
    for node, index in uses:
        node.replace_input_with(index, cast.outputs[0])
    value.dtype = ir.DataType.FLOAT16
    graph.insert_before(next(iter(graph)), [cast])


def _same(a: ir.TensorProtocol | None, b: ir.TensorProtocol) -> bool:
    if a is b:
        return True
    if a is None or a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if isinstance(a, ir.ExternalTensor) and isinstance(b, ir.ExternalTensor):
        return (a.path, a.offset, a.length) == (b.path, b.offset, b.length)
    return a.tobytes() == b.tobytes()


def write_weights(weights: Weights, names: list[str], dtypes: dict[str, str], path: Path) -> dict:
    """Write `names` of `weights` (as `dtypes`, numpy names) into `path`; returns the manifest entry."""
    tensors, offset = {}, 0
    with open(path, "wb") as f:
        for name in names:
            array = np.asarray(weights[name].numpy())
            array = array.astype(dtypes.get(name, array.dtype.name), copy=False)
            padding = -offset % ALIGN
            f.write(b"\0" * padding)
            offset += padding
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            tensors[name] = [offset, [int(d) for d in array.shape], array.dtype.name]
            offset += array.nbytes
    return {"file": path.name, "tensors": tensors}
