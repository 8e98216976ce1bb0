"""`--emit-standard`: the original dense model at static shapes, beside the paged buckets.

A dense model's KV inputs grow every step (past [B, Hkv, P, Dh], P = tokens so
far), which a static program cannot do. Each form gets the convention its
attention op already supports (M = max_context; `StandardKVCache` in
pagedc.runtime.sessions.standard_cache implements the feeding):

form gqa ("shared_buffer", genai's past_present_share_buffer): every phase takes
    past [B, Hkv, M, Dh] and attention_mask [B, M]. The sequence's KV sits at
    positions 0..n-1 of the buffer; the mask has ones at 0..n+S-1 (so
    seqlens_k = n+S-1, total_sequence_length = M); present [B, Hkv, M, Dh]
    is the next step's past. A prefill bucket counts its padding columns as
    tokens: right padding is causally invisible to the real ones, and the next
    step's mask (ones to n) overwrites and hides what the padding wrote.
    Prefill starts at position 0 (MIGraphX's GQA puts a prompt at 0..S-1).
form decomposed ("static_past", HF Concat(past, new)): prefill takes past
    [B, Hkv, 0, Dh] and attention_mask [B, S] (1 real token, 0 padding) and
    returns present [B, Hkv, S, Dh]: keep its first n tokens in a buffer
    [B, Hkv, M-1, Dh]. Decode takes that buffer as past and attention_mask
    [B, M]: ones at the n filled positions and at column M-1 (the new token),
    position_ids = n; present[:, :, M-1] is the new token's KV, stored at n.

Both were checked under ONNX Runtime against the dynamic dense model
(tests/compiler/test_mxr_standard.py, test_mxr_exporters.py), gqa at batch 1:
ORT's GroupQueryAttention refuses a multi-token step over a past buffer at
batch > 1, which MIGraphX's static GQA builds (unverified here). genai
GroupQueryAttention nodes get their trailing empty inputs trimmed (12 -> 9;
MIGraphX takes at most 11).
"""

from __future__ import annotations

import onnx_ir as ir

from pagedc.mxr.lowering import Bucket, LoweringError, input_shapes, lower_static
from pagedc.passes.detect import find_attention_sites
from pagedc.passes.site import AttentionSite

KV_LAYOUTS = {"gqa": "shared_buffer", "decomposed": "static_past"}


def standard_sites(model: ir.Model) -> list[AttentionSite]:
    """The dense model's attention layers; all of one form pagedc can give static KV inputs."""
    detection = find_attention_sites(model)
    if detection.misses or not detection.sites:
        reasons = "; ".join(str(m) for m in detection.misses) or "no attention layer with a KV cache found"
        raise LoweringError(f"--emit-standard: cannot place the dense model's KV inputs ({reasons})")
    forms = {site.form for site in detection.sites}
    if len(forms) != 1 or not forms <= KV_LAYOUTS.keys():
        raise LoweringError(f"--emit-standard supports models whose layers are all one of {sorted(KV_LAYOUTS)}; "
                            f"this one has {sorted(forms)}")
    return detection.sites


def kv_lengths(form: str, bucket: Bucket, max_context: int) -> tuple[int, int]:
    """(past length P, attention_mask length T) of a bucket's static inputs."""
    if form == "gqa":
        return max_context, max_context
    if bucket.phase == "prefill":
        return 0, bucket.seq_len
    return max_context - 1, max_context


def lower_standard(model: ir.Model, sites: list[AttentionSite], bucket: Bucket,
                   max_context: int) -> tuple[ir.Model, dict[str, list[int]]]:
    """A static copy of the dense `model` for one bucket, and its input shapes."""
    past_len, mask_len = kv_lengths(sites[0].form, bucket, max_context)
    fixed = {"attention_mask": [bucket.batch, mask_len]}                            # [B, T]
    for site in sites:
        for name in (site.past_key, site.past_value):
            fixed[name] = [bucket.batch, site.num_kv_heads, past_len, site.head_dim]  # [B, Hkv, P, Dh]
    names = {value.name for value in model.graph.inputs}
    shapes = {name: dims for name, dims in input_shapes(model.graph, bucket, {}, fixed).items() if name in names}
    static = lower_static(model, shapes)
    column_seqlens_k(static)
    return static, shapes


def column_seqlens_k(model: ir.Model) -> int:
    """Feed GroupQueryAttention's seqlens_k as [B, 1]; returns the nodes changed.

    NOTE: MIGraphX (f729a52, parse_group_query_attention.cpp) multibroadcasts seqlens_k to
    [B, num_heads]; the ONNX op's [B] aligns with the trailing num_heads and throws
    `MULTIBROADCAST: input shape {2} cannot be broadcasted to {2, 4}` at batch > 1 ([1] broadcasts,
    so batch 1 parsed). [B, 1] broadcasts; MIGraphX's rotary and concat_past_present read seqlens_k
    element-wise, whatever its shape, and ONNX Runtime's GroupQueryAttention takes [B, 1] too.
    """
    nodes = [n for n in model.graph if n.op_type == "GroupQueryAttention" and len(n.inputs) > 5
             and n.inputs[5] is not None and n.inputs[5].shape is not None and len(n.inputs[5].shape) == 1]
    columns: dict[ir.Value, ir.Value] = {}
    for node in nodes:
        seqlens_k = node.inputs[5]
        if seqlens_k not in columns:
            axes = ir.Value(name=f"{seqlens_k.name}_column_axes", const_value=ir.tensor([1], ir.DataType.INT64))
            axes.shape, axes.dtype = ir.Shape([1]), ir.DataType.INT64
            model.graph.register_initializer(axes)
            unsqueeze = ir.node("Unsqueeze", [seqlens_k, axes], name=f"{seqlens_k.name}_column")
            unsqueeze.outputs[0].name = f"{seqlens_k.name}_column"
            unsqueeze.outputs[0].dtype = seqlens_k.dtype
            unsqueeze.outputs[0].shape = ir.Shape([seqlens_k.shape[0], 1])
            model.graph.insert_before(node, unsqueeze)
            columns[seqlens_k] = unsqueeze.outputs[0]
        node.replace_input_with(5, columns[seqlens_k])
    return len(nodes)


def standard_note(sites: list[AttentionSite], max_context: int) -> dict:
    """The manifest's `standard` entry: how standard artifacts take and return their KV."""
    layout = KV_LAYOUTS[sites[0].form]
    return {
        "kv": layout,
        "max_context": max_context,
        "past": [[s.past_key, s.past_value] for s in sites],
        "present": [[s.present_key, s.present_value] for s in sites],
        "feeding": _FEEDING[layout],
    }


_FEEDING = {
    "shared_buffer": "past [B, Hkv, M, Dh] holds tokens 0..n-1; attention_mask [B, M] ones at 0..n+S-1 (a prefill "
                     "bucket counts its padding); present [B, Hkv, M, Dh] is the next past; prefill starts at n=0",
    "static_past": "prefill: past [B, Hkv, 0, Dh], attention_mask [B, S] 1 real / 0 padding, keep present[:, :, :n]; "
                   "decode: past = buffer [B, Hkv, M-1, Dh], attention_mask [B, M] ones at 0..n-1 and M-1, "
                   "position_ids n, store present[:, :, M-1] at n",
}
