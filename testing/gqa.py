"""Form B: a Llama decoder as onnxruntime-genai 0.18's model builder emits it.

Computed once, shared by all layers (genai's "attn_mask_reformat" subgraph):

    seqlens_k             = Cast<int32>(ReduceSum(attention_mask, axes=[1], keepdims=0) - 1)   # [B]
    total_sequence_length = Cast<int32>(Shape(attention_mask)[1])                          # scalar

Per layer, one node with genai's 12 inputs (the last three empty):

    GroupQueryAttention(q [B, S, H*Dh], k [B, S, Hkv*Dh], v [B, S, Hkv*Dh],
                        past_key_values.{i}.key, past_key_values.{i}.value,   # [B, Hkv, P, Dh]
                        seqlens_k, total_sequence_length,
                        cos_cache, sin_cache,                                  # [max_pos, Dh/2]
                        "", "", "")                                            # position_ids, attention_bias, head_sink
      -> attn [B, S, H*Dh], present.{i}.key, present.{i}.value             # [B, Hkv, T, Dh]
    attrs: num_heads, kv_num_heads, do_rotary=1, rotary_interleaved=0, scale=1/sqrt(Dh)
           [, local_window_size=sliding_window]

Measured on ORT 1.32 CPU: local_window_size=W lets query p see keys p - W < j <= p
(W keys, its own included), the same window as form A's sliding_window mask.
ORT 1.32's schema has 17 inputs (query_seqlens, k_scale, ... after head_sink);
genai 0.18 emits the first 12.

Constants are initializers and weights carry genai's names
(`model.layers.{i}.attn.q_proj.MatMul.weight`). RMSNorm and the MLP are the
decomposed ONNX ops of `blocks` rather than genai's SimplifiedLayerNormalization
contrib ops, so onnx.checker accepts the model; the attention site is genai's.

The padding convention (right padding, as genai pads batches) and how
GroupQueryAttention then places KV and picks rotary positions are described in
`pagedc.testing.reference`, which reproduces them.
"""

from __future__ import annotations

import numpy as np
import onnx

from pagedc.testing import blocks
from pagedc.testing.config import DecoderConfig
from pagedc.testing.graph import INT32, MS_DOMAIN, GraphBuilder
from pagedc.testing.rope import half_tables
from pagedc.testing.weights import layer_prefix

OPSET = 21


def build_gqa(config: DecoderConfig, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    _check_supported(config)
    g = GraphBuilder("llama_gqa", opset=OPSET, constants="initializer")
    io = blocks.declare_inputs(g, config, with_position_ids=False)
    blocks.declare_outputs(g, config)
    init_name = _genai_names(config)

    seqlens_k, total_sequence_length = _seqlens(g, io["attention_mask"])
    cos_half, sin_half = half_tables(config)  # [max_pos, Dh/2]
    shared = dict(
        seqlens_k=seqlens_k,
        total_sequence_length=total_sequence_length,
        cos_cache=g.initializer("cos_cache", cos_half),
        sin_cache=g.initializer("sin_cache", sin_half),
    )
    g.scope = "/model/embed_tokens"
    x = blocks.embed(g, weights, init_name, io["input_ids"])  # [B, S, D]
    for i in range(config.num_layers):

        def attention(h, i=i):
            return _attention(g, config, weights, init_name, h, i, io["past"][i], **shared)

        x = blocks.decoder_layer(g, config, weights, init_name, x, i, attention)
    blocks.lm_head(g, config, weights, init_name, x)
    return g.model(producer="pagedc.testing (onnxruntime-genai 0.18 builder-style)")


def _check_supported(config: DecoderConfig) -> None:
    # ORT's GroupQueryAttention rejects do_rotary with head_size % 16 != 0.
    if config.head_dim % 16 != 0:
        raise ValueError(
            f"form 'gqa' needs head_dim to be a multiple of 16 (GroupQueryAttention with do_rotary=1), "
            f"got head_dim={config.head_dim}; use form 'decomposed' or a head_dim such as 16 or 32"
        )


def _genai_names(config: DecoderConfig) -> blocks.InitName:
    def init_name(key: str) -> str:
        if key.endswith("_proj.weight") or key == "lm_head.weight":
            return key.replace("self_attn.", "attn.").replace(".weight", ".MatMul.weight")
        if key == "model.norm.weight":
            return f"model.layers.{config.num_layers}.final_norm_layernorm.weight"
        return key

    return init_name


def _seqlens(g: GraphBuilder, attention_mask: str) -> tuple[str, str]:
    g.scope = "/model/attn_mask_reformat/attn_mask_subgraph"
    num_tokens = g.op("ReduceSum", attention_mask, g.const([1]), keepdims=0)  # [B] int64
    seqlens_k = g.op("Cast", g.op("Sub", num_tokens, g.const(1)), to=INT32)  # [B] int32
    total = g.op("Gather", g.op("Shape", attention_mask), g.const(1), axis=0)  # scalar int64
    return seqlens_k, g.op("Cast", total, to=INT32)


def _attention(
    g: GraphBuilder,
    config: DecoderConfig,
    weights: dict,
    init_name: blocks.InitName,
    h: str,
    i: int,
    past: tuple[str, str],
    **shared: str,
) -> str:
    p = layer_prefix(i)
    g.scope = f"/model/layers.{i}/attn"
    q = blocks.linear(g, weights, init_name, h, f"{p}.self_attn.q_proj.weight")  # [B, S, H*Dh]
    k = blocks.linear(g, weights, init_name, h, f"{p}.self_attn.k_proj.weight")  # [B, S, Hkv*Dh]
    v = blocks.linear(g, weights, init_name, h, f"{p}.self_attn.v_proj.weight")  # [B, S, Hkv*Dh]
    attrs = dict(
        num_heads=config.num_heads,
        kv_num_heads=config.num_kv_heads,
        do_rotary=1,
        rotary_interleaved=0,
        scale=config.scale,
    )
    if config.sliding_window is not None:
        attrs["local_window_size"] = config.sliding_window
    inputs = [q, k, v, past[0], past[1], shared["seqlens_k"], shared["total_sequence_length"]]
    inputs += [shared["cos_cache"], shared["sin_cache"], "", "", ""]
    outputs = [f"/model/layers.{i}/attn/GroupQueryAttention/output_0", *blocks.present_names(i)]
    out = g.op("GroupQueryAttention", *inputs, outputs=outputs, domain=MS_DOMAIN, **attrs)[0]  # [B, S, H*Dh]
    return blocks.linear(g, weights, init_name, out, f"{p}.self_attn.o_proj.weight")  # [B, S, D]
