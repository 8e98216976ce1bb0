"""Lowering for MIGraphX: one fully static graph per shape bucket (DESIGN.md §3, §7).

MIGraphX's ONNX parser evaluates Reshape shapes, Squeeze/Unsqueeze axes, Range
bounds and Expand shapes while parsing, and turns any symbolic input dim into
a default or a dynamic shape. So each bucket gets static input shapes and then
everything shape-derived is constant-folded (onnxscript's folder with ONNX
shape inference), e.g. for the paged model, bucket decode [B=2, S=1],
max_blocks MB=4, block_size 16, num_blocks NB=64:

    block_table [batch_size, max_blocks]  ->  [2, 4]        slot_mapping [num_tokens] -> [2]
    key_cache.i [num_blocks, Hkv, 16, Dh] ->  [64, Hkv, 16, Dh]
    Range(0, Squeeze(Shape(block_table)[1:2] * 16), 1)  ->  constant [0 .. 63]
    Reshape(slot_mapping, Concat([1], Shape(position_ids)))  ->  Reshape(slot_mapping, [1, 2, 1])

Weights stay external and untouched: a node reading a weight (external data,
or more than FOLD_INPUT_LIMIT elements) is never folded, so lowering reads
only the graph. GroupQueryAttention nodes lose their trailing empty inputs
(genai 0.18 emits 12, MIGraphX's parser takes at most 11).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer

from pagedc.errors import ModelError
from pagedc.manifest import Bucket

PHASES = ("prefill", "decode")
FOLD_INPUT_LIMIT = 1 << 16      # elements; larger constant inputs are weights, never folded
MAX_FOLD_ROUNDS = 4


class LoweringError(ModelError):
    """A model that cannot be given static shapes; the message names the input and what to do."""


def buckets_for(batches: tuple[int, ...], prefill_lens: tuple[int, ...]) -> list[Bucket]:
    """Prefill [B, S] for every batch and prefill length, then decode [B, 1] for every batch."""
    prefill = [Bucket("prefill", b, s) for b in sorted(set(batches)) for s in sorted(set(prefill_lens))]
    return prefill + [Bucket("decode", b, 1) for b in sorted(set(batches))]


def lower_paged(model: ir.Model, bucket: Bucket, *, max_blocks: int, num_blocks: int) -> ir.Model:
    """A static copy of the paged model `rewrite_to_paged` produced, for one bucket; `model` is not changed."""
    sizes = {"batch_size": bucket.batch, "sequence_length": bucket.seq_len, "max_blocks": max_blocks,
             "num_tokens": bucket.batch * bucket.seq_len, "num_blocks": num_blocks}
    return lower_static(model, input_shapes(model.graph, bucket, sizes))


def input_shapes(graph: ir.Graph, bucket: Bucket, sizes: dict[str, int],
                 fixed: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Static dims of every graph input: `fixed` ones, input_ids/position_ids [B, S], the rest by dim name."""
    shapes = dict(fixed or {})
    for value in graph.inputs:
        if value.is_initializer() or value.name in shapes:
            continue
        if value.name in ("input_ids", "position_ids"):
            shapes[value.name] = [bucket.batch, bucket.seq_len]          # [B, S]
        elif value.shape is None:
            raise LoweringError(f"input '{value.name}' has no shape; re-export the model with input shapes")
        else:
            shapes[value.name] = [_static_dim(value, i, dim, sizes) for i, dim in enumerate(value.shape)]
    return shapes


def _static_dim(value: ir.Value, axis: int, dim, sizes: dict[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    if dim.value in sizes:
        return sizes[dim.value]
    known = ", ".join(sorted(sizes)) or "none"
    raise LoweringError(f"input '{value.name}' dim {axis} is '{dim}'; pagedc knows the static sizes of {known} only: "
                        "export the model with that dim fixed or named like one of them")


def lower_static(model: ir.Model, shapes: dict[str, list[int]]) -> ir.Model:
    """Clone `model`, give its inputs `shapes`, trim GroupQueryAttention inputs, fold what is now constant."""
    model = model.clone()   # shares tensors: weights stay where they are
    for value in model.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(shapes[value.name])
    _forget_inferred_shapes(model.graph)
    trim_gqa_inputs(model)
    fold_static(model)
    if zero_muls_to_constants(model):
        fold_static(model)
    expand_zero_adds(model)
    return model


def expand_zero_adds(model: ir.Model) -> int:
    """Integer `Add(x, zeros)` (a broadcast written as an add) -> `Expand(x, shape)`; returns the nodes replaced.

    NOTE: MIGraphX f729a52's simplify_algebra (run by quantize_fp16, and by the gpu target's
    compile) throws `BROADCAST: when broadcasting, succeeding sizes must match` on
    Add(Div(x [1, 2, 1, 16, 1], 16), zeros [2, 1, 1]): the paged graph's slot -> (block, head)
    index build, wherever a leading dim is 2 (batch 2, or the combined layout's K/V rows).
    Expand is the same broadcast, exactly, and passes.
    """
    replaced = 0
    for node in list(model.graph):
        zeros = _integer_zeros_input(node)
        out = node.outputs[0] if node.op_type == "Add" else None
        if (zeros is None or out in model.graph.outputs or out.shape is None
                or not all(isinstance(d, int) for d in out.shape)):
            continue
        other = node.inputs[1 - zeros]
        shape = ir.Value(name=f"{out.name}_shape", const_value=ir.tensor(np.array(list(out.shape), np.int64)))
        shape.shape, shape.dtype = ir.Shape([len(out.shape)]), ir.DataType.INT64
        model.graph.register_initializer(shape)
        expand = ir.node("Expand", [other, shape], name=f"{node.name}_expand")
        expand.outputs[0].shape, expand.outputs[0].dtype = out.shape, out.dtype
        model.graph.insert_before(node, expand)
        ir.convenience.replace_all_uses_with(out, expand.outputs[0])
        model.graph.remove(node, safe=True)
        replaced += 1
    return replaced


def zero_muls_to_constants(model: ir.Model) -> int:
    """Integer `Mul(x, 0)` -> a zeros constant of its static shape (foldable further); returns the nodes replaced.

    NOTE: the paged graph builds index tuples as Mul(blocks, 0) + heads; MIGraphX f729a52's
    simplify_algebra throws on that Add at batch 2 (see expand_zero_adds): as constants it folds away.
    """
    replaced = 0
    for node in list(model.graph):
        out = node.outputs[0] if node.op_type == "Mul" else None
        if (out is None or _integer_zeros_input(node, "Mul") is None or out in model.graph.outputs
                or out.shape is None or not all(isinstance(d, int) for d in out.shape)
                or int(np.prod(list(out.shape))) > FOLD_INPUT_LIMIT):
            continue
        zeros = ir.Value(name=f"{out.name}_zeros", const_value=ir.tensor(np.zeros(list(out.shape), out.dtype.numpy())))
        zeros.shape, zeros.dtype = out.shape, out.dtype
        model.graph.register_initializer(zeros)
        ir.convenience.replace_all_uses_with(out, zeros)
        model.graph.remove(node, safe=True)
        replaced += 1
    return replaced


def _integer_zeros_input(node: ir.Node, op_type: str = "Add") -> int | None:
    if node.op_type != op_type or len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    for index, value in enumerate(node.inputs):
        tensor = value.const_value
        if (tensor is not None and node.inputs[1 - index].const_value is None and tensor.dtype.is_integer()
                and tensor.size <= FOLD_INPUT_LIMIT and not tensor.numpy().any()):
            return index
    return None


def _forget_inferred_shapes(graph: ir.Graph) -> None:
    """Drop the shapes of computed values: they carry the old symbolic dims; inference recomputes them."""
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.outputs:
            if value.const_value is None:
                value.shape = None


def trim_gqa_inputs(model: ir.Model) -> int:
    """Drop trailing empty inputs of GroupQueryAttention nodes with more than 11; returns the nodes trimmed."""
    trimmed = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "GroupQueryAttention" and len(node.inputs) > 11:
            last = max((i for i, v in enumerate(node.inputs) if v is not None), default=-1)
            if last + 1 < len(node.inputs):
                node.resize_inputs(last + 1)
                trimmed += 1
    return trimmed


def fold_static(model: ir.Model) -> int:
    """Constant-fold with ONNX shape inference until nothing changes; returns the number of nodes removed."""
    before = sum(1 for _ in model.graph)
    for _ in range(MAX_FOLD_ROUNDS):
        result = optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_should_fold)
        common_passes.RemoveUnusedNodesPass()(model)
        if not result.modified:
            break
    return before - sum(1 for _ in model.graph)


def _should_fold(node: ir.Node) -> bool | None:
    """Never fold a node that reads a weight (external or large): that would load it into memory.

    Small ConstantOfShape nodes are folded although onnxscript keeps them by default: TorchScript
    exports (Optimum) build Expand shapes as Where(Equal(shape, ConstantOfShape(...) * -1), ...).
    """
    for value in node.inputs:
        tensor = value.const_value if value is not None else None
        if tensor is not None and (isinstance(tensor, ir.ExternalTensor) or tensor.size > FOLD_INPUT_LIMIT):
            return False
    if node.op_type == "ConstantOfShape" and node.inputs[0].const_value is not None:
        return int(np.prod(node.inputs[0].const_value.numpy())) <= FOLD_INPUT_LIMIT
    return None   # onnxscript's default rules
