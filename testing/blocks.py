"""Graph pieces both reference forms share: KV I/O, RMSNorm, SwiGLU MLP, embedding, lm_head.

Only attention differs between form A (decomposed) and form B
(GroupQueryAttention); everything here is spelled the way HF exports spell it
(RMSNorm as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul, SiLU as x * Sigmoid(x)).
Layout letters: B batch, S new tokens, P past tokens, T = P + S, D hidden,
Hkv KV heads, Dh head_dim, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pagedc.testing.config import DecoderConfig
from pagedc.testing.graph import FLOAT, INT64, GraphBuilder, onnx_dtype
from pagedc.testing.weights import layer_prefix

# Dynamic dimension names on every graph input/output.
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"

# Maps a make_weights() key to the initializer name an exporter would give it.
InitName = Callable[[str], str]


def past_names(i: int) -> tuple[str, str]:
    return f"past_key_values.{i}.key", f"past_key_values.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


def declare_inputs(g: GraphBuilder, config: DecoderConfig, *, with_position_ids: bool) -> dict:
    """input_ids, attention_mask, [position_ids], past_key_values.{i}.key/value."""
    kv_type = onnx_dtype(config.np_dtype)
    kv_shape = [BATCH, config.num_kv_heads, PAST, config.head_dim]  # [B, Hkv, P, Dh]
    names = {
        "input_ids": g.input("input_ids", INT64, [BATCH, SEQ]),
        "attention_mask": g.input("attention_mask", INT64, [BATCH, TOTAL]),
    }
    if with_position_ids:
        names["position_ids"] = g.input("position_ids", INT64, [BATCH, SEQ])
    names["past"] = [
        tuple(g.input(name, kv_type, kv_shape) for name in past_names(i)) for i in range(config.num_layers)
    ]
    return names


def declare_outputs(g: GraphBuilder, config: DecoderConfig) -> None:
    """logits [B, S, V], present.{i}.key/value [B, Hkv, T, Dh]."""
    dtype = onnx_dtype(config.np_dtype)
    g.output("logits", dtype, [BATCH, SEQ, config.vocab_size])
    for i in range(config.num_layers):
        for name in present_names(i):
            g.output(name, dtype, [BATCH, config.num_kv_heads, TOTAL, config.head_dim])


def embed(g: GraphBuilder, weights: dict, init_name: InitName, input_ids: str) -> str:
    key = "model.embed_tokens.weight"
    table = g.initializer(init_name(key), weights[key])  # [V, D]
    return g.op("Gather", table, input_ids, axis=0)  # [B, S, D]


def rms_norm(g: GraphBuilder, config: DecoderConfig, weights: dict, init_name: InitName, x: str, key: str) -> str:
    """HF LlamaRMSNorm: weight * (x / sqrt(mean(x²) + eps)), computed in float32."""
    is_fp16 = config.dtype == "float16"
    h = g.op("Cast", x, to=FLOAT) if is_fp16 else x
    square = g.op("Pow", h, g.const(2.0, np.float32))
    if g.opset >= 18:
        variance = g.op("ReduceMean", square, g.const([-1]), keepdims=1)  # [B, S, 1]
    else:
        variance = g.op("ReduceMean", square, axes=[-1], keepdims=1)
    denominator = g.op("Sqrt", g.op("Add", variance, g.const(config.rms_norm_eps, np.float32)))
    h = g.op("Mul", h, g.op("Reciprocal", denominator))
    if is_fp16:
        h = g.op("Cast", h, to=onnx_dtype(config.np_dtype))
    return g.op("Mul", g.initializer(init_name(key), weights[key]), h)


def linear(g: GraphBuilder, weights: dict, init_name: InitName, x: str, key: str, **out) -> str:
    return g.op("MatMul", x, g.initializer(init_name(key), weights[key]), **out)


def mlp(g: GraphBuilder, weights: dict, init_name: InitName, x: str, i: int) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x)), silu(g) = g * sigmoid(g)."""
    p = layer_prefix(i)
    gate = linear(g, weights, init_name, x, f"{p}.mlp.gate_proj.weight")  # [B, S, F]
    up = linear(g, weights, init_name, x, f"{p}.mlp.up_proj.weight")  # [B, S, F]
    act = g.op("Mul", gate, g.op("Sigmoid", gate))
    return linear(g, weights, init_name, g.op("Mul", act, up), f"{p}.mlp.down_proj.weight")  # [B, S, D]


def decoder_layer(
    g: GraphBuilder, config: DecoderConfig, weights: dict, init_name: InitName, x: str, i: int, attention
) -> str:
    """Pre-norm residual block; `attention(h)` returns the o_proj output [B, S, D]."""
    p = layer_prefix(i)
    g.scope = f"/model/layers.{i}/input_layernorm"
    h = rms_norm(g, config, weights, init_name, x, f"{p}.input_layernorm.weight")
    g.scope = f"/model/layers.{i}/self_attn"
    x = g.op("Add", x, attention(h))
    g.scope = f"/model/layers.{i}/post_attention_layernorm"
    h = rms_norm(g, config, weights, init_name, x, f"{p}.post_attention_layernorm.weight")
    g.scope = f"/model/layers.{i}/mlp"
    return g.op("Add", x, mlp(g, weights, init_name, h, i))


def lm_head(g: GraphBuilder, config: DecoderConfig, weights: dict, init_name: InitName, x: str) -> str:
    g.scope = "/model/norm"
    h = rms_norm(g, config, weights, init_name, x, "model.norm.weight")
    g.scope = "/lm_head"
    return linear(g, weights, init_name, h, "lm_head.weight", outputs=["logits"])  # [B, S, V]
