"""What one layer's mask is (a site.Mask: causal, sliding window N, or other and why); its fully-masked-row guard.

A mask (additive bias or boolean) is the causal mask the paged mask replaces
when the graph computes it only from the step's own facts: the graph inputs
`attention_mask`, `position_ids` (any input whose name says mask or
position), and shapes of anything (Shape/Size). A comparison of key
and query positions must be in it, and its float constants must be scalars
(0, -inf, the dtype's min):

    attention_mask ─Cast─GatherND─┐                       (padding)
    Range(P + S) ──LessOrEqual(q_pos)─And─▶ Not ─Cast─Mul(min)─▶ bias [B,1,S,T] ─▶ Add(scores) | GQA attention_bias
    Range(S) + P (past shape) ─────┘

Anything else is "other": a bias that is a graph input, one that reads a
weight or a per-head constant (ALiBi slopes, learned relative bias), one
computed from activations.

Fully-masked-row guard (transformers' sdpa lowering, torch.onnx dynamo):

    attention output ─(Reshape/Transpose)─▶ Where(ReduceSum(mask) < 1, 0, ·)

zeroes query rows that see no key. Under the paged mask every real query
sees at least its own key, so the guard is the identity there and the paged
pass bypasses it (it would otherwise keep attention_mask and the dense past
shapes alive).
"""

from __future__ import annotations

import re

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes.site import Mask

COMPARE_OPS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Trilu"})
REDUCE_OPS = frozenset({"ReduceSum", "ReduceMax", "ReduceMin"})
_MASK_SOURCE = re.compile(r"(mask|position)", re.IGNORECASE)
_SHAPE_OPS = frozenset({"Shape", "Size"})
_GUARD_PATH = frozenset({"Reshape", "Transpose", "Cast", "Identity"})


def _mask_nodes(value: ir.Value) -> list[ir.Node]:
    """The nodes a mask is computed from; Shape/Size end the walk (only their input's shape is read)."""
    return gw.ancestors(value, max_nodes=2000, is_boundary=lambda node: node.op_type in _SHAPE_OPS)


def classify_mask(mask: ir.Value | None) -> Mask:
    """Causal, sliding window N or other (and why) for the additive/boolean mask of one layer."""
    if mask is None:
        return Mask.other("no mask found before Softmax")
    if mask.is_graph_input():
        return Mask.other(f"mask comes from graph input '{mask.name}' (bias or custom mask)")
    nodes = _mask_nodes(mask)
    if not any(n.op_type in COMPARE_OPS for n in nodes):
        return Mask.other("no causal comparison in the mask")
    foreign = foreign_source(nodes)
    if foreign:
        return Mask.other(f"the mask {foreign}, not only from attention_mask/position_ids/shapes")
    window = _window_size(nodes)
    return Mask.sliding_window(window) if window else Mask.causal()


def foreign_source(nodes: list[ir.Node]) -> str | None:
    """What, among `nodes`, a causal/padding mask is not computed from (None when nothing)."""
    for node in nodes:
        if node.op_type in _SHAPE_OPS:
            continue
        for value in node.inputs:
            if value is None:
                continue
            if value.is_graph_input() and "sliding_window" in (value.name or ""):
                # NOTE: transformers' exports pass `_sliding_window_tensor` through unused and bake the window
                # into the mask as a constant; a window only known at run time cannot be paged statically.
                return f"takes its window from graph input '{value.name}' at run time (export it as a constant)"
            if value.is_graph_input() and not _MASK_SOURCE.search(value.name or ""):
                return f"reads graph input '{value.name}'"
            tensor = ir.convenience.get_const_tensor(value)
            if tensor is not None and tensor.dtype.is_floating_point() and tensor.size > 1:
                return f"reads the float constant '{value.name}' of shape {list(tensor.shape)} (a learned or per-head bias)"
    return None


def _window_size(nodes: list[ir.Node]) -> int | None:
    """A constant offset |c| > 1 added to positions before a comparison (HF: kv_idx > q_idx - window)."""
    for node in nodes:
        if node.op_type == "Trilu" and len(node.inputs) > 1:
            k = gw.const_ints(node.inputs[1])
            if k and abs(k[0]) > 1:
                return abs(k[0])
        if node.op_type in ("Sub", "Add") and _feeds_compare(node):
            for operand in node.inputs:
                value = gw.const_ints(operand)
                if value and len(value) == 1 and abs(value[0]) > 1:
                    return abs(value[0])
    return None


def _feeds_compare(node: ir.Node) -> bool:
    hits = gw.walk_down(node.outputs[0], set(COMPARE_OPS), {"Cast", "Unsqueeze", "Reshape", "Expand", "Identity"}, max_depth=3)
    return bool(hits)


def row_guard(attention_out: ir.Value) -> ir.Node | None:
    """The Where(no key visible, 0, out) right after a layer's attention output, if there is one."""
    for where in gw.walk_down(attention_out, {"Where"}, _GUARD_PATH, max_depth=3):
        condition, zero, _ = where.inputs
        if not _is_zero(zero) or condition is None or where.inputs[2] is condition:
            continue
        nodes = _mask_nodes(condition)
        ops = {n.op_type for n in nodes}
        if ops & REDUCE_OPS and ops & COMPARE_OPS and foreign_source(nodes) is None:
            return where
    return None


def _is_zero(value: ir.Value | None) -> bool:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor is not None and tensor.size <= 64 and not tensor.numpy().any()

