"""Page one form-C site: replace ONNX `Attention` (opset 23/24) with past by paged attention from plain ops.

    before:  Attention(Q, K, V, attn_mask, past_key, past_value) -> (Y, present_key, present_value)
             Q [B,H,S,Dh] | [B,S,H·Dh]; K, V [B,Hkv,S,Dh] | [B,S,Hkv·Dh]; Y like Q
    after:   K, V ─ScatterND▶ key_cache_out.{i} ─GatherND▶ key [B,Hkv,T,Dh]; Y = attend(Q, key, value) with the paged mask

The layer's own attn_mask (already classified causal) and the past/present
values fall away. MIGraphX cannot take this op at all (its parser mistakes
it for com.microsoft.Attention), so the rewrite also makes such models
compilable there.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes import graph_walk as gw
from pagedc.passes.grouped_attention import attend
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.site import AttentionSite


_UNSUPPORTED_INPUTS = {6: "nonpad_kv_seqlen"}


def check_attention(site: AttentionSite) -> str | None:
    node = site.nodes.op
    if len(node.outputs) > 3 and node.outputs[3].uses():
        return "Attention's qk_matmul_output is used; the paged rewrite does not produce it"
    return gw.unsupported_input(node, _UNSUPPORTED_INPUTS)


def rewrite_attention(site: AttentionSite, builder: PagedBuilder, pools: list[ir.Value]) -> list[ir.Value]:
    node, b = site.nodes.op, builder
    h, hkv, dh = site.num_heads, site.num_kv_heads, site.head_dim
    is_3d = node.inputs[0].shape is not None and len(node.inputs[0].shape) == 3
    q, k, v = node.inputs[:3]
    if is_3d:   # K/V [B, S, heads·Dh] -> [B, S, heads, Dh], token-first for the scatter; Q stays as it is
        k, v = (b.op("Reshape", x, b.const([0, 0, hkv, dh])) for x in (k, v))
    outs, key, value = b.write_and_read(pools, k, v, hkv, tokens_first=is_3d)
    scale = gw.attr(node, "scale", 0.0) or 1.0 / math.sqrt(dh)
    out = attend(b, q, key, value, h, hkv, dh, scale, gw.attr(node, "softcap", 0.0), pools[0].dtype,
                 site.window, tokens_first=is_3d)                                              # like Q
    b.retire(node, out)
    return outs
