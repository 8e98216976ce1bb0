"""Page one form-B site: replace GroupQueryAttention by paged attention built from plain ops.

    before:  GroupQueryAttention(query [B,S,H·Dh], key [B,S,Hkv·Dh], value, past_key, past_value,
                                 seqlens_k, total_sequence_length, cos_cache, sin_cache, ...)
             -> output [B,S,H·Dh], present_key, present_value
    after:   query ─Reshape─Transpose─Split─▶ q [B,H,S,Dh], k, v [B,Hkv,S,Dh]
             q, k ─rotary(cos_cache, sin_cache at position_ids)─▶ k ─ScatterND▶ key_cache_out.{i} ─GatherND▶ K
             q [B,Hkv,G·S,Dh] · Kᵀ [B,Hkv,Dh,T] ─▶ scale ─▶ Add(mask) ─▶ Softmax ─▶ · V [B,Hkv,T,Dh]
             ─▶ [B,S,H·Dh]

Per layer that is ~19 ops besides the projections (NOTE: ONNX Runtime's CPU
cost per op, ~5-10 µs, is what a decode step spends beyond its MatMuls, so
the layout is chosen to need the fewest): heads-first from the start, so
the scatter takes K/V as they are and the grouped Q is a free Reshape; on
ONNX Runtime rotary is com.microsoft.RotaryEmbedding (one op for Q, one for
K), for MIGraphX the plain-op rotary with cos/sin rows gathered once per graph.

Queries are grouped per KV head (head h reads KV head h // G, as GQA does), so
K/V are never repeated. Positions come from the `position_ids` input instead of
`seqlens_k`; seqlens_k, total_sequence_length and attention_mask fall away.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes.grouped_attention import attend
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.site import AttentionSite


_UNSUPPORTED_INPUTS = {11: "head_sink"}


def check_gqa(site: AttentionSite) -> str | None:
    node = site.nodes.op
    if gw.attr(node, "smooth_softmax", 0):
        return "GroupQueryAttention with smooth_softmax=1 (attention sink) is not supported"
    return gw.unsupported_input(node, _UNSUPPORTED_INPUTS)


def rewrite_gqa(site: AttentionSite, builder: PagedBuilder, pools: list[ir.Value]) -> list[ir.Value]:
    node = site.nodes.op
    b = builder
    h, hkv, dh = site.num_heads, site.num_kv_heads, site.head_dim
    q, k, v = _split_heads(b, node, h, hkv, dh)                                        # [B, ·, S, Dh]
    if gw.attr(node, "do_rotary", 0):
        interleaved = bool(gw.attr(node, "rotary_interleaved", 0))
        rotary = fused_rotary if b.fuse_rotary else apply_rotary
        # The op's own position_ids (input 9) index the caches when given: transformers' ORT-fused exports
        # pass per-token cos/sin rows there with positions 0..S-1.
        rows = b.position_ids if gw.input_at(node, 9) is None else node.inputs[9]
        q = rotary(b, q, node.inputs[7], node.inputs[8], rows, interleaved, h, dh)
        k = rotary(b, k, node.inputs[7], node.inputs[8], rows, interleaved, hkv, dh)
    outs, key, value = b.write_and_read(pools, k, v, hkv)
    scale = gw.attr(node, "scale", 0.0) or 1.0 / math.sqrt(dh)
    out = attend(b, q, key, value, h, hkv, dh, scale, gw.attr(node, "softcap", 0.0), pools[0].dtype, site.window)
    out = b.op("Transpose", out, perm=[0, 2, 1, 3])                                   # [B, S, H, Dh]
    b.retire(node, b.op("Reshape", out, b.const([0, 0, h * dh])))                     # [B, S, H·Dh]
    return outs


def _split_heads(b: PagedBuilder, node: ir.Node, h: int, hkv: int, dh: int) -> tuple[ir.Value, ir.Value, ir.Value]:
    """q [B, H, S, Dh], k and v [B, Hkv, S, Dh] from GQA's query/key/value [B, S, ··Dh].

    genai packs them into one query [B, S, (H + 2·Hkv)·Dh]: one Reshape, one Transpose and one
    Split then give all three heads-first, the layout the scatter, rotary and MatMuls take as is.
    """
    def heads_first(x: ir.Value, num_heads: int) -> ir.Value:
        return b.op("Transpose", b.op("Reshape", x, b.const([0, 0, num_heads, dh])), perm=[0, 2, 1, 3])

    if node.inputs[1] is not None:
        return heads_first(node.inputs[0], h), heads_first(node.inputs[1], hkv), heads_first(node.inputs[2], hkv)
    packed = heads_first(node.inputs[0], h + 2 * hkv)                                  # [B, H + 2·Hkv, S, Dh]
    if b.opset >= 13:
        return tuple(b.tape.op_multi_out("Split", [packed, b.const([h, hkv, hkv])], {"axis": 1}, num_outputs=3))
    bounds = [0, h, h + hkv, h + 2 * hkv]
    return tuple(b.op("Slice", packed, b.const([lo]), b.const([hi]), b.const([1])) for lo, hi in zip(bounds, bounds[1:]))


def fused_rotary(b: PagedBuilder, x: ir.Value, cos_cache: ir.Value, sin_cache: ir.Value, rows: ir.Value,
                 interleaved: bool, num_heads: int, head_dim: int) -> ir.Value:
    """com.microsoft.RotaryEmbedding on x [B, heads, S, Dh] at rows [B, S] of the caches: one op instead of ~12
    (ONNX Runtime)."""
    rotary_dim = 2 * _cache_width(cos_cache)
    attributes = {"interleaved": int(interleaved)}
    if rotary_dim < head_dim:   # partial rotary: the last Dh - R dims pass through
        attributes.update(rotary_embedding_dim=rotary_dim, num_heads=num_heads)
    return b.tape.op("RotaryEmbedding", [x, rows, cos_cache, sin_cache], attributes, domain="com.microsoft")


def apply_rotary(b: PagedBuilder, x: ir.Value, cos_cache: ir.Value, sin_cache: ir.Value, rows: ir.Value,
                 interleaved: bool, num_heads: int, head_dim: int) -> ir.Value:
    """Rotary on x [B, heads, S, Dh] at rows [B, S] of caches [max_pos, R/2] (R <= Dh rotated dims), from plain
    ops (MIGraphX); the cos/sin rows are gathered once per graph."""
    cos, sin = b.rotary_rows(cos_cache, sin_cache, rows)                                # [B, 1, S, R/2]
    half = _cache_width(cos_cache)
    rot, rest = b.op("Slice", x, b.const([0]), b.const([2 * half]), b.const([3])), None
    if 2 * half < head_dim:  # partial rotary: the last Dh - R dims pass through
        rest = b.op("Slice", x, b.const([2 * half]), b.const([head_dim]), b.const([3]))
    if interleaved:  # pairs (x0, x1), (x2, x3), ...
        pairs = b.op("Reshape", rot, b.const([0, 0, 0, half, 2]))
        x1 = b.op("Squeeze", b.op("Slice", pairs, b.const([0]), b.const([1]), b.const([4])), b.const([4]))
        x2 = b.op("Squeeze", b.op("Slice", pairs, b.const([1]), b.const([2]), b.const([4])), b.const([4]))
    else:  # halves (x[:R/2], x[R/2:])
        x1 = b.op("Slice", rot, b.const([0]), b.const([half]), b.const([3]))
        x2 = b.op("Slice", rot, b.const([half]), b.const([2 * half]), b.const([3]))
    y1 = b.op("Sub", b.op("Mul", x1, cos), b.op("Mul", x2, sin))
    y2 = b.op("Add", b.op("Mul", x2, cos), b.op("Mul", x1, sin))
    if interleaved:
        y = b.op("Concat", b.op("Unsqueeze", y1, b.const([4])), b.op("Unsqueeze", y2, b.const([4])), axis=4)
        y = b.op("Reshape", y, b.const([0, 0, 0, 2 * half]))
    else:
        y = b.op("Concat", y1, y2, axis=3)
    return y if rest is None else b.op("Concat", y, rest, axis=3)


def _cache_width(cache: ir.Value) -> int:
    """R/2 of a cos/sin cache [rows, R/2]; transformers' ORT-fused exports build it with Concat (shape unknown),
    so the width is read off the first static [·, R/2] value it is built from."""
    for _ in range(8):
        if cache.shape is not None and len(cache.shape) == 2 and isinstance(cache.shape[1], int):
            return cache.shape[1]
        producer = cache.producer()
        if producer is None or producer.op_type not in ("Concat", "Reshape", "Expand", "Identity", "Cast"):
            break
        cache = producer.inputs[0]
    raise ValueError(f"GroupQueryAttention's cos/sin cache '{cache.name}' has no static width [rows, R/2]")
