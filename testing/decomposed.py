"""Form A: a Llama decoder as HF Optimum / torch.onnx (TorchScript) exports it (and forms C, D around the same layers).

Per layer, the attention site the passes anchor on:

    past_key_values.{i}.key ─┐
    k ─ Reshape ─ Transpose ─ RoPE ─ Concat(axis=-2) ─▶ present.{i}.key
                                        │
                       [GQA/MQA only] Unsqueeze ─ Expand ─ Reshape        (repeat_kv)
                                        │
    q ─ Reshape ─ Transpose ─ RoPE ─ MatMul(q, Transpose(k)) ─ Mul(scale) ─ Add(mask) ─ Softmax
        ─ MatMul(·, v) ─ Transpose ─ Reshape ─ o_proj

The additive mask `[B, 1, S, T]` is built once from `attention_mask` and
shapes, as transformers' sdpa/eager mask helpers export it:

    S = Shape(input_ids)[1]; T = Shape(attention_mask)[1]; P = T - S
    cache_position = Range(P, T, 1)                         # [S] cache index of each new token
    visible = Range(0, T, 1)[None, :] <= cache_position[:, None]
              [and Range(0, T, 1)[None, :] > cache_position[:, None] - sliding_window]
              and Cast<bool>(attention_mask)[:, None, None, :]   # [B, 1, S, T]
    mask = Where(visible, 0, finfo(dtype).min)

RoPE is HF's rotate_half: `[max_pos, Dh]` cos/sin initializers Gathered by
`position_ids`, `q * cos + cat(-q[..., Dh/2:], q[..., :Dh/2]) * sin`.
Constants are `Constant` nodes and linear weights are named `onnx::MatMul_*`,
as in TorchScript exports, so passes cannot lean on names.

NOTE: the fp16 build keeps Softmax in fp16 (what SDPA-based exports emit);
HF's eager attention would wrap it in Cast(float)/Cast(half). RMSNorm is
computed in float32 with Casts around it, as HF does.
"""

from __future__ import annotations

import numpy as np
import onnx

from pagedc.testing import blocks
from pagedc.testing.config import DecoderConfig
from pagedc.testing.graph import BOOL, MS_DOMAIN, GraphBuilder
from pagedc.testing.rope import full_tables
from pagedc.testing.weights import layer_prefix

OPSET = 17
ATTENTION_OPSET = 23   # ONNX `Attention` (form C) exists from opset 23
INT64_MAX = np.iinfo(np.int64).max
CORES = ("decomposed", "attention", "mha")


def build_decomposed(config: DecoderConfig, weights: dict[str, np.ndarray], core: str = "decomposed") -> onnx.ModelProto:
    """Form A; core "attention" (form C) or "mha" (form D) builds each layer's attention as that one op instead.

    The fused cores are built here directly, around the same projections, rotary and mask, so the
    form C and D fixtures never depend on pagedc's own detection of form A.
    """
    if core not in CORES:
        raise ValueError(f"core must be one of {CORES}, got {core!r}")
    if core == "mha" and config.num_kv_heads != config.num_heads:
        raise ValueError(f"form 'mha' needs num_kv_heads == num_heads (MultiHeadAttention has no GQA), "
                         f"got {config.num_kv_heads} and {config.num_heads}")
    g = GraphBuilder(f"llama_{core}", opset=ATTENTION_OPSET if core == "attention" else OPSET, constants="Constant")
    io = blocks.declare_inputs(g, config, with_position_ids=True)
    blocks.declare_outputs(g, config)
    init_name = _torchscript_names()

    g.scope = "/model"
    batch, seq = _dims(g, io["input_ids"], [0, 1])  # [1] int64 each
    mask = _attention_mask(g, config, io["input_ids"], io["attention_mask"])  # [B, 1, S, T]
    rope = _rope_cos_sin(g, config, io["position_ids"])  # 2 x [B, 1, S, Dh]
    x = blocks.embed(g, weights, init_name, io["input_ids"])  # [B, S, D]
    for i in range(config.num_layers):
        site = dict(batch=batch, seq=seq, mask=mask, rope=rope, past=io["past"][i], core=core)

        def attention(h, i=i, site=site):
            return _attention(g, config, weights, init_name, h, i, **site)

        x = blocks.decoder_layer(g, config, weights, init_name, x, i, attention)
    blocks.lm_head(g, config, weights, init_name, x)
    return g.model(producer="pagedc.testing (HF Optimum-style export)")


def _torchscript_names() -> blocks.InitName:
    """Linear weights get anonymous `onnx::MatMul_<n>` names; the rest keep HF names."""
    count = iter(range(1000, 10**6))

    def init_name(key: str) -> str:
        return f"onnx::MatMul_{next(count)}" if key.endswith("_proj.weight") else key

    return init_name


def _dims(g: GraphBuilder, x: str, axes: list[int]) -> list[str]:
    """Shape(x)[axis] as 1-D `[1]` int64 tensors, ready for Concat into a shape."""
    shape = g.op("Shape", x)
    return [g.op("Unsqueeze", g.op("Gather", shape, g.const(axis), axis=0), g.const([0])) for axis in axes]


def _attention_mask(g: GraphBuilder, config: DecoderConfig, input_ids: str, attention_mask: str) -> str:
    g.scope = "/model/causal_mask"
    seq = g.op("Gather", g.op("Shape", input_ids), g.const(1), axis=0)  # S scalar
    total = g.op("Gather", g.op("Shape", attention_mask), g.const(1), axis=0)  # T scalar
    cache_position = g.op("Range", g.op("Sub", total, seq), total, g.const(1))  # [S]
    query_index = g.op("Unsqueeze", cache_position, g.const([1]))  # [S, 1]
    key_index = g.op("Unsqueeze", g.op("Range", g.const(0), total, g.const(1)), g.const([0]))  # [1, T]
    visible = g.op("LessOrEqual", key_index, query_index)  # [S, T]
    if config.sliding_window is not None:
        window_start = g.op("Sub", query_index, g.const(config.sliding_window))  # [S, 1]
        visible = g.op("And", visible, g.op("Greater", key_index, window_start))
    visible = g.op("Unsqueeze", visible, g.const([0, 1]))  # [1, 1, S, T]
    is_token = g.op("Unsqueeze", g.op("Cast", attention_mask, to=BOOL), g.const([1, 2]))  # [B, 1, 1, T]
    visible = g.op("And", visible, is_token)  # [B, 1, S, T]
    dtype = config.np_dtype
    return g.op("Where", visible, g.const(0.0, dtype), g.const(np.finfo(dtype).min, dtype))


def _rope_cos_sin(g: GraphBuilder, config: DecoderConfig, position_ids: str) -> tuple[str, str]:
    g.scope = "/model/rotary_emb"
    cos_table, sin_table = full_tables(config)  # [max_pos, Dh]
    out = []
    for name, table in (("cos_cached", cos_table), ("sin_cached", sin_table)):
        rows = g.op("Gather", g.initializer(f"model.rotary_emb.{name}", table), position_ids, axis=0)  # [B, S, Dh]
        out.append(g.op("Unsqueeze", rows, g.const([1])))  # [B, 1, S, Dh]
    return out[0], out[1]


def _attention(
    g: GraphBuilder,
    config: DecoderConfig,
    weights: dict,
    init_name: blocks.InitName,
    h: str,
    i: int,
    *,
    batch: str,
    seq: str,
    mask: str,
    rope: tuple[str, str],
    past: tuple[str, str],
    core: str,
) -> str:
    p = layer_prefix(i)
    q, k, v = (
        _split_heads(g, config, blocks.linear(g, weights, init_name, h, f"{p}.self_attn.{name}.weight"), batch, seq)
        for name in ("q_proj", "k_proj", "v_proj")
    )
    q, k = _apply_rope(g, config, q, *rope), _apply_rope(g, config, k, *rope)  # [B, H, S, Dh], [B, Hkv, S, Dh]
    presents = blocks.present_names(i)
    if core == "attention":
        out = _attention_op(g, config, q, k, v, mask, past, presents)          # [B, H, S, Dh]
    elif core == "mha":
        out = _mha_op(g, config, q, k, v, mask, past, presents)                # [B, S, H*Dh]
    else:
        out = _decomposed_core(g, config, q, k, v, mask, past, presents)       # [B, H, S, Dh]
    if core != "mha":
        out = g.op("Transpose", out, perm=[0, 2, 1, 3])  # [B, S, H, Dh]
        out = g.op("Reshape", out, g.op("Concat", batch, seq, g.const([-1]), axis=0))  # [B, S, H*Dh]
    return blocks.linear(g, weights, init_name, out, f"{p}.self_attn.o_proj.weight")  # [B, S, D]


def _decomposed_core(g: GraphBuilder, config: DecoderConfig, q: str, k: str, v: str, mask: str,
                     past: tuple[str, str], presents: tuple[str, str]) -> str:
    """Concat(past, new) -> repeat-kv -> MatMul -> scale -> Add(mask) -> Softmax -> MatMul; [B, H, S, Dh]."""
    present_key, present_value = presents
    key = g.op("Concat", past[0], k, axis=-2, outputs=[present_key])  # [B, Hkv, T, Dh]
    value = g.op("Concat", past[1], v, axis=-2, outputs=[present_value])  # [B, Hkv, T, Dh]
    key, value = _repeat_kv(g, config, key), _repeat_kv(g, config, value)  # [B, H, T, Dh]
    scores = g.op("MatMul", q, g.op("Transpose", key, perm=[0, 1, 3, 2]))  # [B, H, S, T]
    scores = g.op("Mul", scores, g.const(config.scale, config.np_dtype))
    probs = g.op("Softmax", g.op("Add", scores, mask), axis=-1)  # [B, H, S, T]
    return g.op("MatMul", probs, value)  # [B, H, S, Dh]


def _attention_op(g: GraphBuilder, config: DecoderConfig, q: str, k: str, v: str, mask: str,
                  past: tuple[str, str], presents: tuple[str, str]) -> str:
    """Form C: Attention(Q, K, V [B, ·, S, Dh], attn_mask [B, 1, S, T], past_key, past_value) -> Y [B, H, S, Dh]."""
    out = g.op("Attention", q, k, v, mask, past[0], past[1], outputs=[g.scope + "/attn_out", *presents],
               q_num_heads=config.num_heads, kv_num_heads=config.num_kv_heads)
    return out[0]


def _mha_op(g: GraphBuilder, config: DecoderConfig, q: str, k: str, v: str, mask: str,
            past: tuple[str, str], presents: tuple[str, str]) -> str:
    """Form D: MultiHeadAttention(query, key, value [B, S, H*Dh], attention_bias=mask, past) -> [B, S, H*Dh]."""
    width = g.const([0, 0, config.num_heads * config.head_dim])
    q, k, v = (g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 1, 3]), width) for x in (q, k, v))
    out = g.op("MultiHeadAttention", q, k, v, "", "", mask, past[0], past[1], domain=MS_DOMAIN,
               outputs=[g.scope + "/mha_out", *presents], num_heads=config.num_heads)
    return out[0]


def _split_heads(g: GraphBuilder, config: DecoderConfig, x: str, batch: str, seq: str) -> str:
    """[B, S, N*Dh] -> view(B, S, -1, Dh) -> transpose(1, 2) -> [B, N, S, Dh]."""
    shape = g.op("Concat", batch, seq, g.const([-1, config.head_dim]), axis=0)
    return g.op("Transpose", g.op("Reshape", x, shape), perm=[0, 2, 1, 3])


def _apply_rope(g: GraphBuilder, config: DecoderConfig, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., Dh/2:], x[..., :Dh/2])."""
    half = config.head_dim // 2
    axes = g.const([-1])
    x1 = g.op("Slice", x, g.const([0]), g.const([half]), axes)
    x2 = g.op("Slice", x, g.const([half]), g.const([INT64_MAX]), axes)
    rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def _repeat_kv(g: GraphBuilder, config: DecoderConfig, x: str) -> str:
    """HF repeat_kv: [B, Hkv, T, Dh] -> [B, Hkv, n_rep, T, Dh] -> [B, H, T, Dh]; absent for MHA."""
    n_rep = config.num_groups
    if n_rep == 1:
        return x
    batch, total = _dims(g, x, [0, 2])
    head_dim = g.const([config.head_dim])
    expanded_shape = g.op("Concat", batch, g.const([config.num_kv_heads, n_rep]), total, head_dim, axis=0)
    expanded = g.op("Expand", g.op("Unsqueeze", x, g.const([2])), expanded_shape)  # [B, Hkv, n_rep, T, Dh]
    shape = g.op("Concat", batch, g.const([config.num_heads]), total, head_dim, axis=0)
    return g.op("Reshape", expanded, shape)  # [B, H, T, Dh]
