"""Form A: decomposed attention over `Concat(past, new, axis=-2)` (Optimum, torch.onnx, transformers).

    past_key  [B,Hkv,P,Dh] ─┐
    new_key   [B,Hkv,S,Dh] ─┴─Concat(-2)─▶ present_key [B,Hkv,T,Dh] ─(repeat-kv, Kᵀ)─┐
    query     [B,H,S,Dh] ───────────────────────────────────────────────MatMul─▶ scores
    scores ─(Mul scale)─Add(mask)─▶ Softmax ─▶ probs ─MatMul─▶ [B,H,S,Dh]
    past_value ─Concat(-2)─▶ present_value ─(repeat-kv)──────────────────┘ (second operand)

Key and value of one layer are paired through their shared Softmax.
"""

from __future__ import annotations

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes import mask_facts, site_facts
from pagedc.passes.site import AttentionSite, DecomposedNodes, Miss


def find_decomposed_sites(graph: ir.Graph, claimed: set[str]) -> tuple[list[AttentionSite], list[Miss]]:
    positions = {id(node): i for i, node in enumerate(graph)}
    keys: dict[int, tuple[ir.Node, ir.Node, ir.Node]] = {}  # softmax id -> (concat, qk matmul, softmax)
    values: dict[int, tuple[ir.Node, ir.Node]] = {}  # softmax id -> (concat, pv matmul)
    misses: list[Miss] = []
    for past in graph.inputs:
        if past.name in claimed:
            continue
        concat = _past_concat(past)
        if concat is None:
            continue
        role = _classify(concat)
        if isinstance(role, str):
            misses.append(Miss(past.name, role))
        elif role[0] == "key":
            keys[id(role[2])] = (concat, role[1], role[2])
        else:
            values[id(role[2])] = (concat, role[1])
    sites = []
    for softmax_id, (key_concat, qk, softmax) in keys.items():
        if softmax_id not in values:
            misses.append(Miss(key_concat.inputs[0].name, "no value cache feeds the MatMul after this layer's Softmax"))
            continue
        value_concat, pv = values.pop(softmax_id)
        sites.append(_site(key_concat, value_concat, qk, softmax, pv, positions[id(softmax)]))
    for value_concat, _ in values.values():
        misses.append(Miss(value_concat.inputs[0].name, "value cache whose Softmax has no key cache feeding it"))
    return sites, misses


def _past_concat(past: ir.Value) -> ir.Node | None:
    """The Concat(past, new, axis=-2|2) that consumes a rank-4 past input, if any."""
    for node in gw.consumers(past):
        if node.op_type != "Concat" or node.inputs[0] is not past or len(node.inputs) != 2:
            continue
        axis = gw.attr(node, "axis")
        rank = len(past.shape) if past.shape is not None else 4
        if axis is not None and axis % rank == rank - 2:
            return node
    return None


def _classify(concat: ir.Node):
    """("key", qk_matmul, softmax) or ("value", pv_matmul, softmax), or a reason string."""
    matmuls = gw.walk_down(concat.outputs[0], {"MatMul"}, gw.LAYOUT_OPS)
    if not matmuls:
        return "its Concat output reaches no MatMul through reshape/transpose/repeat-kv ops"
    for matmul in matmuls:
        softmaxes = gw.walk_down(matmul.outputs[0], {"Softmax"}, gw.SCORE_OPS)
        if softmaxes:
            return ("key", matmul, softmaxes[0])
        softmaxes = gw.walk_up(matmul.inputs[0], {"Softmax"}, gw.PROBS_OPS)
        if softmaxes:
            return ("value", matmul, softmaxes[0])
    return "its MatMul is not part of a MatMul -> Softmax -> MatMul attention"


def _site(key_concat, value_concat, qk, softmax, pv, position) -> AttentionSite:
    past_key, new_key = key_concat.inputs
    num_kv_heads, head_dim = gw.static_dim(past_key, 1), gw.static_dim(past_key, 3)
    if not (num_kv_heads and head_dim):  # symbolic past dims: derived from the K projection's head split
        num_kv_heads, head_dim = site_facts.kv_dims_from_new_key(new_key)
    mask_add, mask = _mask_add(qk, softmax)
    return AttentionSite(
        layer=-1,
        form="decomposed",
        num_heads=site_facts.num_heads_from_query(qk.inputs[0], head_dim, num_kv_heads),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rotary=site_facts.rotary_of(new_key),
        mask=mask_facts.classify_mask(mask),
        past_key=past_key.name,
        past_value=value_concat.inputs[0].name,
        present_key=_present_name(key_concat.outputs[0]),
        present_value=_present_name(value_concat.outputs[0]),
        nodes=DecomposedNodes(key_concat=key_concat, value_concat=value_concat, qk_matmul=qk, pv_matmul=pv,
                              mask_add=mask_add, mask_value=mask, row_guard=mask_facts.row_guard(pv.outputs[0])),
        graph_position=position,
    )


def _mask_add(qk: ir.Node, softmax: ir.Node) -> tuple[ir.Node | None, ir.Value | None]:
    """The Add between QKᵀ and Softmax and its mask operand (None, None when masking is elsewhere)."""
    score_values = {id(qk.outputs[0])}
    frontier = [qk.outputs[0]]
    for _ in range(8):
        next_frontier = []
        for value in frontier:
            for node in gw.consumers(value):
                if node is softmax or node.op_type not in gw.SCORE_OPS:
                    continue
                if node.op_type == "Add":
                    others = [inp for inp in node.inputs if id(inp) not in score_values]
                    return node, (others[0] if others else None)
                if node.op_type == "Where" and id(node.inputs[0]) not in score_values:
                    return node, node.inputs[0]  # boolean mask: Where(mask, scores, -inf)
                score_values.add(id(node.outputs[0]))
                next_frontier.append(node.outputs[0])
        frontier = next_frontier
    return None, None


def _present_name(value: ir.Value) -> str:
    """The graph output a Concat result is exported as (directly or through Identity)."""
    if value.is_graph_output():
        return value.name
    for node in gw.consumers(value):
        if node.op_type == "Identity" and node.outputs[0].is_graph_output():
            return node.outputs[0].name
    return f"(not a graph output: {value.name})"
