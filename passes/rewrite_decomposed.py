"""Page one form-A site: keep the model's own attention math, swap where K/V come from.

    before:  past_key ─Concat(-2)─▶ present_key ──▶ (repeat-kv, Kᵀ) MatMul ─▶ Add(mask) ─▶ Softmax ─▶ …
             new_key ─┘
    after:   key_cache.{i} ─ScatterND(new_key)─▶ key_cache_out.{i} ─GatherND─▶ key [B,Hkv,T,Dh] ─▶ (repeat-kv, Kᵀ) MatMul
             paged mask [B,1,S,T] ─▶ Add ─▶ Softmax ─▶ …

When K and V reach their MatMuls only through repeat-kv, the layer also
attends per KV-head group (grouped_attention.py) instead of repeating K/V.

Everything the source derived from the past's shape (past length, total
length) is rebuilt by paged.py for every form (PagedBuilder.replace_past_shapes):
a virtual past of T - S tokens, so the total length the model computes is T.
"""

from __future__ import annotations

import onnx_ir as ir

from pagedc.passes.grouped_attention import can_group, group_attention
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.site import AttentionSite


def check_decomposed(site: AttentionSite) -> str | None:
    """Why this site cannot be paged, or None."""
    nodes = site.nodes
    for name, concat in (("past key", nodes.key_concat), ("past value", nodes.value_concat)):
        past = concat.inputs[0]
        others = [n for n, _ in past.uses() if n is not concat and n.op_type != "Shape"]
        if others:
            return f"{name} '{past.name}' also feeds {others[0].op_type} '{others[0].name}', not only its Concat"
    if nodes.mask_add is None or nodes.mask_value is None:
        return "no mask Add/Where between QKᵀ and Softmax to replace with the paged mask"
    return None


def rewrite_decomposed(site: AttentionSite, builder: PagedBuilder, pools: list[ir.Value]) -> list[ir.Value]:
    """Rewire one layer onto its pool(s); returns the pool outputs (Shape(past): paged.py repairs it)."""
    key_concat, value_concat = site.nodes.key_concat, site.nodes.value_concat
    is_grouped = can_group(site)   # checked on the original K/V paths, before they are rewired
    new_key, new_value = key_concat.inputs[1], value_concat.inputs[1]       # [B, Hkv, S, Dh]
    outs, key, value = builder.write_and_read(pools, new_key, new_value, site.num_kv_heads)
    _drop_graph_output(builder.graph, key_concat.outputs[0], site.present_key)
    _drop_graph_output(builder.graph, value_concat.outputs[0], site.present_value)
    key_concat.outputs[0].replace_all_uses_with(key)
    value_concat.outputs[0].replace_all_uses_with(value)
    _replace_mask(site, builder)
    if is_grouped:
        group_attention(site, builder, key, value)
        builder.count("grouped attention (repeat-kv removed)")
    return outs


def _replace_mask(site: AttentionSite, builder: PagedBuilder) -> None:
    """Point the layer's mask operand at the paged mask (additive for Add, boolean for Where)."""
    node = site.nodes.mask_add
    mask_index = next(i for i, inp in enumerate(node.inputs) if inp is site.nodes.mask_value)
    if node.op_type == "Where":
        node.replace_input_with(mask_index, builder.visible(site.window))
        return
    past = site.nodes.key_concat.inputs[0]
    dtype = node.outputs[0].dtype or node.inputs[1 - mask_index].dtype or past.dtype
    node.replace_input_with(mask_index, builder.additive_mask(dtype, site.window))


def _drop_graph_output(graph: ir.Graph, value: ir.Value, name: str) -> None:
    """Remove the present output the Concat fed (directly or through an Identity)."""
    for i, out in enumerate(graph.outputs):
        if out is value or out.name == name:
            graph.outputs.pop(i)
            return
