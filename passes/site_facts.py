"""Facts about one attention layer read off the graph: heads, head dims, rotary (mask kind: mask_facts.py).

All three are read from structure and static shapes (weights' shapes, never
their values), so a multi-GB model is inspected without loading its weights.
"""

from __future__ import annotations

import onnx_ir as ir

from pagedc.passes import graph_walk as gw

PROJECTION_OPS = frozenset({"MatMul", "Gemm", "MatMulNBits", "MatMulInteger"})


def projection_width(node: ir.Node) -> int | None:
    """Output features of a projection node (MatMul/Gemm/MatMulNBits with a weight), else None."""
    if node.op_type == "MatMulNBits":
        attr = node.attributes.get("N")
        return attr.as_int() if attr is not None else None
    weight, is_transposed = _weight_operand(node)
    if weight is None or weight.shape is None or len(weight.shape) != 2:
        return None
    trans_b = node.op_type == "Gemm" and "transB" in node.attributes and node.attributes["transB"].as_int()
    dim = weight.shape[0] if (trans_b or is_transposed) else weight.shape[1]
    return dim if isinstance(dim, int) else None


def _weight_operand(node: ir.Node) -> tuple[ir.Value | None, bool]:
    """The constant weight of a projection and whether it enters through a Transpose ([out, in])."""
    if node.op_type not in PROJECTION_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
        return None, False
    weight = node.inputs[1]
    producer = weight.producer()
    if producer is not None and producer.op_type == "Transpose" and _is_constant(producer.inputs[0]):
        return producer.inputs[0], True
    return (weight, False) if _is_constant(weight) else (None, False)


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def is_projection(node: ir.Node) -> bool:
    return node.op_type in PROJECTION_OPS and projection_width(node) is not None


def local_ancestors(value: ir.Value, max_nodes: int = 400) -> list[ir.Node]:
    """Nodes `value` depends on within its own layer.

    The walk stops at projections (the previous layer lies behind them) and at
    Shape (only the shape of its input is used), so it stays local and cheap.
    """
    return gw.ancestors(value, max_nodes, lambda node: is_projection(node) or node.op_type in ("Shape", "Size"))


def _inputs_reached(nodes: list[ir.Node]) -> set[str]:
    return {inp.name for node in nodes for inp in node.inputs if inp is not None and inp.is_graph_input()}


def num_heads_from_query(query: ir.Value, head_dim: int | None, num_kv_heads: int | None) -> int | None:
    """H from the Q projection's width: H·Dh, or (H + 2·Hkv)·Dh for a fused QKV projection."""
    if query.shape is not None and len(query.shape) == 4 and isinstance(query.shape[1], int):
        return query.shape[1]  # already [B, H, S, Dh]
    if not head_dim:
        return None
    nodes = local_ancestors(query)
    projections = [n for n in nodes if is_projection(n)]
    if not projections:
        return None
    width = projection_width(projections[0])
    # Phi-3 / GPT-2 style: one qkv projection, then Split/Slice (after an optional bias Add and a
    # Reshape to [B, S, ·], as Optimum's GPT-2 Gemm does) takes Q out.
    is_fused_qkv = bool(gw.walk_down(projections[0].outputs[0], {"Split", "Slice"}, {"Add", "Reshape"}, max_depth=2))
    if is_fused_qkv and num_kv_heads:
        return width // head_dim - 2 * num_kv_heads
    return width // head_dim


def kv_dims_from_new_key(new_key: ir.Value) -> tuple[int | None, int | None]:
    """(Hkv, Dh) of a layer's new keys [B, Hkv, S, Dh], for a past_key whose dims are symbolic.

    Read off the new key's own shape when static, else off the Reshape that
    splits the K projection into heads ([B, S, Hkv, Dh], constant or a Concat of
    constant pieces; a -1 there is the projection width over the other).
    """
    num_kv_heads, head_dim = gw.static_dim(new_key, 1), gw.static_dim(new_key, 3)
    if num_kv_heads and head_dim:
        return num_kv_heads, head_dim
    for node in local_ancestors(new_key):
        target = _reshape_target(node) if node.op_type == "Reshape" else None
        if target is None or len(target) != 4:
            continue
        heads, dim = target[2], target[3]
        projections = [n for n in local_ancestors(node.inputs[0], max_nodes=3) if is_projection(n)]
        width = projection_width(projections[0]) if projections else None
        if heads == -1 and width and dim and dim > 0:
            heads = width // dim
        if dim == -1 and width and heads and heads > 0:
            dim = width // heads
        if heads and dim and heads > 0 and dim > 0:
            return num_kv_heads or heads, head_dim or dim
    return num_kv_heads, head_dim


def _reshape_target(node: ir.Node) -> list[int | None] | None:
    """A Reshape's target shape: a constant, or a Concat of one-element pieces (None where not constant)."""
    shape = node.inputs[1]
    whole = gw.const_ints(shape)
    if whole is not None:
        return whole
    producer = shape.producer()
    if producer is None or producer.op_type != "Concat":
        return None
    pieces = [gw.const_ints(piece) for piece in producer.inputs]
    if any(p is not None and len(p) != 1 for p in pieces):
        return None
    return [p[0] if p is not None else None for p in pieces]


def rotary_of(new_key: ir.Value) -> str:
    """Where rotary embedding is applied to the new keys before they enter the cache."""
    nodes = local_ancestors(new_key)
    ops = {node.op_type for node in nodes}
    if "RotaryEmbedding" in ops:
        where = "com.microsoft.RotaryEmbedding on q/k"
    elif ops & {"Sin", "Cos"} or {"Neg", "Concat"} <= ops:
        where = "rotate_half on q/k"
    else:
        return "none"
    return where + _position_source(nodes)


def _position_source(nodes: list[ir.Node]) -> str:
    reached = _inputs_reached(nodes)
    if any("position" in name for name in reached):
        return ", positions from " + sorted(n for n in reached if "position" in n)[0]
    if any("mask" in name for name in reached):
        return ", positions from attention_mask"
    return ""
