"""Forms B, C, D: one attention op per layer that takes past_key / past_value inputs.

    B  com.microsoft.GroupQueryAttention(query, key, value, past_key, past_value,
           seqlens_k, total_sequence_length, cos_cache, sin_cache[, position_ids, attention_bias, head_sink])
           -> (output, present_key, present_value)        (onnxruntime-genai's model builder)
    C  Attention(Q, K, V[, attn_mask, past_key, past_value]) -> (Y, present_key, present_value)   (ONNX opset 23/24)
    D  com.microsoft.MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias,
           past_key, past_value) -> (output, present_key, present_value)                 (ORT fusions)

past/present are `[B, Hkv, P|T, Dh]` in all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes import mask_facts, site_facts
from pagedc.passes.site import AttentionSite, FusedNodes, Mask, Miss


@dataclass(frozen=True)
class _OpForm:
    form: str
    past_key_index: int  # input index of past_key; past_value follows it
    mask_index: int | None  # input index of an additive/boolean mask, if the op has one


_OP_FORMS = {
    ("com.microsoft", "GroupQueryAttention"): _OpForm("gqa", 3, 10),
    ("", "Attention"): _OpForm("attention", 4, 3),
    ("com.microsoft", "MultiHeadAttention"): _OpForm("mha", 6, 5),
}


def find_fused_sites(graph: ir.Graph, claimed: set[str]) -> tuple[list[AttentionSite], list[Miss]]:
    sites: list[AttentionSite] = []
    misses: list[Miss] = []
    for position, node in enumerate(graph):
        op_form = _OP_FORMS.get((_domain(node), node.op_type))
        if op_form is None:
            continue
        past_key, past_value = gw.input_at(node, op_form.past_key_index), gw.input_at(node, op_form.past_key_index + 1)
        if past_key is None and past_value is None:
            continue  # attention without a KV cache (e.g. an encoder): not a site
        problem = _past_problem(node, past_key, past_value)
        if problem:
            misses.append(Miss(node.name or node.op_type, problem))
            continue
        sites.append(_site(node, op_form, past_key, past_value, position))
    return sites, misses


def _domain(node: ir.Node) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _past_problem(node: ir.Node, past_key: ir.Value | None, past_value: ir.Value | None) -> str | None:
    if past_key is None or past_value is None:
        return f"{node.op_type} has only one of past_key / past_value"
    for past in (past_key, past_value):
        if not past.is_graph_input():
            return f"{node.op_type}'s past input '{past.name}' is computed in the graph, not a graph input"
    if len(node.outputs) < 3 or not node.outputs[1].name or not node.outputs[2].name:
        return f"{node.op_type} has past inputs but no present_key/present_value outputs"
    return None


def _site(node: ir.Node, op_form: _OpForm, past_key: ir.Value, past_value: ir.Value, position: int) -> AttentionSite:
    num_heads, num_kv_heads = _heads(node, op_form.form, past_key)
    head_dim = gw.static_dim(past_key, 3) or _head_dim_from_query(node, num_heads, num_kv_heads)
    return AttentionSite(
        layer=-1,
        form=op_form.form,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rotary=_rotary(node, op_form.form),
        mask=_mask(node, op_form),
        past_key=past_key.name,
        past_value=past_value.name,
        present_key=node.outputs[1].name,
        present_value=node.outputs[2].name,
        nodes=FusedNodes(op=node, row_guard=mask_facts.row_guard(node.outputs[0])),
        graph_position=position,
    )


def _head_dim_from_query(node: ir.Node, num_heads: int | None, num_kv_heads: int | None) -> int | None:
    """Dh from the query's projection width when past_key's last dim is symbolic (genai: `kv_cache_dim`).

    The query is [B, S, H·Dh], or packed QKV [B, S, (H + 2·Hkv)·Dh] when the key input is empty.
    """
    query, is_packed = node.inputs[0], gw.input_at(node, 1) is None
    width = gw.static_dim(query, -1) if query.shape is not None and len(query.shape) == 3 else None
    if width is None:
        projections = [n for n in site_facts.local_ancestors(query, max_nodes=4) if site_facts.is_projection(n)]
        width = site_facts.projection_width(projections[0]) if projections else None
    heads = (num_heads or 0) + (2 * (num_kv_heads or 0) if is_packed else 0)
    return width // heads if width and heads and width % heads == 0 else None


def _heads(node: ir.Node, form: str, past_key: ir.Value) -> tuple[int | None, int | None]:
    if form == "gqa":
        return gw.attr(node, "num_heads"), gw.attr(node, "kv_num_heads")
    if form == "mha":
        heads = gw.attr(node, "num_heads")
        return heads, gw.static_dim(past_key, 1) or heads
    return gw.attr(node, "q_num_heads"), gw.attr(node, "kv_num_heads")


def _rotary(node: ir.Node, form: str) -> str:
    if form == "gqa" and gw.attr(node, "do_rotary", 0):
        has_positions = gw.input_at(node, 9) is not None
        source = "position_ids" if has_positions else "seqlens_k"
        return f"inside GroupQueryAttention (do_rotary=1), positions from {source}"
    key = gw.input_at(node, 1)
    return site_facts.rotary_of(key) if key is not None else "none"


def _mask(node: ir.Node, op_form: _OpForm) -> Mask:
    mask = gw.input_at(node, op_form.mask_index) if op_form.mask_index is not None else None
    if op_form.form == "gqa":
        window = gw.attr(node, "local_window_size", -1)
        kind = Mask.sliding_window(window) if window and window > 0 else Mask.causal()
        if mask is None:
            return kind
        if mask.is_graph_input():
            return Mask.other(f"attention_bias input '{mask.name}'")
        # ORT fusions of transformers' exports (batch 1) pass the causal mask as attention_bias.
        bias = mask_facts.classify_mask(mask)
        return kind if bias.kind == "causal" else bias
    if mask is not None:
        return mask_facts.classify_mask(mask)
    causal = gw.attr(node, "is_causal" if op_form.form == "attention" else "unidirectional", 0)
    return Mask.causal() if causal else Mask.other(f"{node.op_type} without a mask and not causal")
