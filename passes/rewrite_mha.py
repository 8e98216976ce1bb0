"""Page one form-D site: replace com.microsoft.MultiHeadAttention with past by paged attention from plain ops.

    before:  MultiHeadAttention(query [B,S,H·Dh], key [B,S,H·Dh], value, bias [3·H·Dh]?, key_padding_mask,
                                attention_bias, past_key [B,H,P,Dh], past_value) -> (output, present_key, present_value)
    after:   (query, key, value) + bias ─▶ K, V [B,S,H,Dh] ─ScatterND▶ key_cache_out.{i} ─GatherND▶ [B,H,T,Dh]
             output = attend(Q, key, value) with the paged mask, [B,S,H·Dh]

ONNX Runtime's fusions of HF exports emit this op (with RotaryEmbedding ahead
of it); its attention_bias (already classified causal) and past/present fall away.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes.grouped_attention import attend
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.site import AttentionSite

_UNSUPPORTED_INPUTS = {4: "key_padding_mask", 8: "past_sequence_length", 9: "cache_indirection"}


def check_mha(site: AttentionSite) -> str | None:
    node = site.nodes.op
    for index, name in ((0, "query"), (1, "key"), (2, "value")):
        value = node.inputs[index]
        if value is None or (value.shape is not None and len(value.shape) != 3):
            return f"MultiHeadAttention's {name} must be [B, S, H·Dh] (packed or 4-D inputs are not supported)"
    if site.num_kv_heads != site.num_heads:
        return "past_key's heads differ from num_heads (MultiHeadAttention has no grouped KV heads)"
    return gw.unsupported_input(node, _UNSUPPORTED_INPUTS)


def rewrite_mha(site: AttentionSite, builder: PagedBuilder, pools: list[ir.Value]) -> list[ir.Value]:
    node, b = site.nodes.op, builder
    h, dh = site.num_heads, site.head_dim
    q, k, v = _with_bias(b, node, h * dh)
    k, v = (b.op("Reshape", x, b.const([0, 0, h, dh])) for x in (k, v))                    # [B, S, H, Dh]
    outs, key, value = b.write_and_read(pools, k, v, h, tokens_first=True)
    scale = gw.attr(node, "scale", 0.0) or 1.0 / math.sqrt(dh)
    b.retire(node, attend(b, q, key, value, h, h, dh, scale, 0.0, pools[0].dtype, site.window,
                          tokens_first=True))                                             # [B, S, H·Dh]
    return outs


def _with_bias(b: PagedBuilder, node: ir.Node, width: int) -> tuple[ir.Value, ir.Value, ir.Value]:
    """query, key, value plus their parts of the packed bias [3·H·Dh], when there is one."""
    q, k, v = node.inputs[:3]
    bias = gw.input_at(node, 3)
    if bias is None:
        return q, k, v
    parts = [b.op("Slice", bias, b.const([i * width]), b.const([(i + 1) * width]), b.const([0])) for i in range(3)]
    return tuple(b.op("Add", x, part) for x, part in zip((q, k, v), parts))
