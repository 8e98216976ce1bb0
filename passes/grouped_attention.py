"""Form A fast path: attend per KV head group instead of repeating K/V for every query head.

    before:  key [B,Hkv,T,Dh] ─Unsqueeze(2)─Expand─Reshape─▶ [B,H,T,Dh] ─Transpose(0,1,3,2)─▶ MatMul(q, ·) ─▶ scores
             probs [B,H,S,T] ─MatMul(·, repeat-kv(value))─▶ [B,H,S,Dh]
    after:   q [B,H,S,Dh] ─Reshape─▶ [B,Hkv,G·S,Dh] · Kᵀ [B,Hkv,Dh,T] ─▶ [B,Hkv,G·S,T] ─Reshape─▶ scores [B,H,S,T]
             probs ─Reshape─▶ [B,Hkv,G·S,T] · V [B,Hkv,T,Dh] ─▶ [B,Hkv,G·S,Dh] ─Reshape─▶ [B,H,S,Dh]

Head h reads KV head h // G, exactly as HF's repeat_kv (Unsqueeze at axis 2,
Expand, Reshape) lays them out, so [B,H,S,·] and [B,Hkv,G·S,·] are the same
memory: the Reshapes are free, the G-fold copies of the context are gone, and
each KV head does one [G·S, Dh]·[Dh, T] product instead of G small ones.
Taken only when the K and V paths are exactly repeat-kv (and the one Kᵀ
transpose); anything else keeps the model's own ops.

NOTE: the G query heads are merged into the rows rather than kept as a
broadcast batch axis ([B,Hkv,G,S,Dh] x [B,Hkv,1,T,Dh]): measured at decode,
context 1024, ORT 1.32 CPU, the broadcast QKᵀ did not split over 2 threads
(55 µs vs 29 µs per layer); probs·V was within 2 µs either way.
"""

from __future__ import annotations

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.site import AttentionSite

_REPEAT_KV_OPS = frozenset({"Unsqueeze", "Expand", "Reshape"})


def repeat_kv_path(start: ir.Value, matmul: ir.Node, operand: int, transposed: bool) -> bool:
    """True if matmul.inputs[operand] is repeat-kv(start), followed by one last-two-axes Transpose when `transposed`."""
    value, num_transposes = matmul.inputs[operand], 0
    for _ in range(8):
        if value is start:
            return num_transposes == (1 if transposed else 0)
        node = value.producer()
        if node is None:
            return False
        if node.op_type == "Transpose":
            if list(gw.attr(node, "perm", [])) != [0, 1, 3, 2]:
                return False
            num_transposes += 1
        elif node.op_type == "Unsqueeze":
            if gw.const_ints(node.inputs[1]) != [2]:
                return False
        elif node.op_type not in _REPEAT_KV_OPS:
            return False
        value = node.inputs[0]
    return False


def can_group(site: AttentionSite) -> bool:
    nodes = site.nodes
    key_out, value_out = nodes.key_concat.outputs[0], nodes.value_concat.outputs[0]
    return bool(site.num_heads) and site.num_heads % site.num_kv_heads == 0 and (
        repeat_kv_path(key_out, nodes.qk_matmul, 1, transposed=True)
        and repeat_kv_path(value_out, nodes.pv_matmul, 1, transposed=False))


def group_attention(site: AttentionSite, builder: PagedBuilder, key: ir.Value, value: ir.Value) -> None:
    """Replace the layer's QKᵀ and probs·V MatMuls by grouped ones reading key/value [B,Hkv,T,Dh] directly."""
    b = builder
    h, hkv, dh = site.num_heads, site.num_kv_heads, site.head_dim
    qk, pv = site.nodes.qk_matmul, site.nodes.pv_matmul
    q = b.op("Reshape", qk.inputs[0], b.const([0, hkv, -1, dh]))                          # [B, Hkv, G·S, Dh]
    scores = b.op("MatMul", q, b.op("Transpose", key, perm=[0, 1, 3, 2]))                 # [B, Hkv, G·S, T]
    qk.outputs[0].replace_all_uses_with(b.op("Reshape", scores, b.heads_shape(h)))        # [B, H, S, T]
    probs = b.op("Reshape", pv.inputs[0], b.heads_shape(hkv))                             # [B, Hkv, G·S, T]
    out = b.op("MatMul", probs, value)                                                    # [B, Hkv, G·S, Dh]
    pv.outputs[0].replace_all_uses_with(b.op("Reshape", out, b.const([0, h, -1, dh])))    # [B, H, S, Dh]


def attend(b: PagedBuilder, q: ir.Value, key: ir.Value, value: ir.Value, h: int, hkv: int, dh: int,
           scale: float, softcap: float, dtype: ir.DataType, window: int | None = None,
           tokens_first: bool = False) -> ir.Value:
    """softmax(q·Kᵀ·scale + paged mask)·V with key/value [B,Hkv,T,Dh].

    q is [B,H,S,Dh] (returns [B,H,S,Dh]) or, with tokens_first, [B,S,H·Dh] or [B,S,H,Dh]
    (returns [B,S,H·Dh]). Used where pagedc replaces a fused attention op (GroupQueryAttention,
    ONNX Attention, MultiHeadAttention): queries are grouped per KV head, so K/V are never
    repeated, and the mask comes pre-tiled for the grouped rows, so scores are never regrouped.
    """
    np_dtype, g = dtype.numpy(), h // hkv
    if tokens_first:
        q = b.op("Transpose", b.op("Reshape", q, b.const([0, 0, hkv, g, dh])), perm=[0, 2, 3, 1, 4])  # [B,Hkv,G,S,Dh]
    q = b.op("Reshape", q, b.const([0, hkv, -1, dh]))                                    # [B, Hkv, G·S, Dh]
    scores = b.op("MatMul", q, b.op("Transpose", key, perm=[0, 1, 3, 2]))               # [B, Hkv, G·S, T]
    scores = b.op("Mul", scores, b.const(scale, dtype=np_dtype))   # NOTE: ORT fuses Transpose+MatMul+Mul into one FusedMatMul
    if softcap:
        capped = b.op("Tanh", b.op("Div", scores, b.const(softcap, dtype=np_dtype)))
        scores = b.op("Mul", capped, b.const(softcap, dtype=np_dtype))
    probs = b.op("Softmax", b.op("Add", scores, b.additive_mask(dtype, window, g)), axis=-1)  # mask [B,1,G·S,T]
    out = b.op("MatMul", probs, value)                                                   # [B, Hkv, G·S, Dh]
    if not tokens_first:
        return b.op("Reshape", out, b.const([0, h, -1, dh]))                            # [B, H, S, Dh]
    out = b.op("Transpose", b.op("Reshape", out, b.const([0, hkv, g, -1, dh])), perm=[0, 3, 1, 2, 4])  # [B,S,Hkv,G,Dh]
    return b.op("Reshape", out, b.const([0, 0, h * dh]))                                # [B, S, H·Dh]
