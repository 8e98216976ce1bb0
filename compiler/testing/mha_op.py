"""Form D reference: the decomposed decoder with each layer's attention as com.microsoft.MultiHeadAttention.

    MultiHeadAttention(query [B,S,H·Dh], key [B,S,H·Dh], value, bias=∅, key_padding_mask=∅,
                       attention_bias [B,1,S,T] additive, past_key [B,H,P,Dh], past_value)
        -> (output [B,S,H·Dh], present_key [B,H,T,Dh], present_value)

What ONNX Runtime's fusions make of HF exports (DESIGN.md §2 form D). Built
from form A by replacing, per layer, Concat(past, new) -> MatMul -> scale ->
Add(mask) -> Softmax -> MatMul with that one op, the heads flattened around
it. MultiHeadAttention has no GQA, so the config needs num_kv_heads == num_heads.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from pagedc.passes.detect import find_attention_sites
from pagedc.testing.config import DecoderConfig
from pagedc.testing.decomposed import build_decomposed


def build_mha(config: DecoderConfig, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    if config.num_kv_heads != config.num_heads:
        raise ValueError(f"form 'mha' needs num_kv_heads == num_heads (MultiHeadAttention has no GQA), "
                         f"got {config.num_kv_heads} and {config.num_heads}")
    model = ir.from_proto(build_decomposed(config, weights))
    graph, width = model.graph, config.num_heads * config.head_dim
    for site in find_attention_sites(model).sites:
        key_concat, value_concat = site.nodes["key_concat"], site.nodes["value_concat"]
        inputs = [_flat(graph, x, width) for x in (site.nodes["qk_matmul"].inputs[0], key_concat.inputs[1],
                                                   value_concat.inputs[1])]
        node = ir.Node("com.microsoft", "MultiHeadAttention",
                       inputs + [None, None, site.values["mask"], key_concat.inputs[0], value_concat.inputs[0]],
                       num_outputs=3, graph=graph, attributes=[ir.AttrInt64("num_heads", config.num_heads)])
        site.nodes["pv_matmul"].outputs[0].replace_all_uses_with(_heads(graph, node.outputs[0], config))
        for concat, present in ((key_concat, node.outputs[1]), (value_concat, node.outputs[2])):
            index = next(i for i, v in enumerate(graph.outputs) if v is concat.outputs[0])
            present.name, concat.outputs[0].name = concat.outputs[0].name, None
            present.dtype, present.shape = concat.outputs[0].dtype, concat.outputs[0].shape
            graph.outputs[index] = present
    model.opset_imports["com.microsoft"] = 1
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    return ir.to_proto(model)


def _const(graph: ir.Graph, values: list[int]) -> ir.Value:
    node = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(np.asarray(values, np.int64)))],
                   graph=graph)
    return node.outputs[0]


def _flat(graph: ir.Graph, x: ir.Value, width: int) -> ir.Value:
    """[B, H, S, Dh] -> [B, S, H·Dh]"""
    moved = ir.Node("", "Transpose", [x], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])], graph=graph).outputs[0]
    return ir.Node("", "Reshape", [moved, _const(graph, [0, 0, width])], graph=graph).outputs[0]


def _heads(graph: ir.Graph, x: ir.Value, config: DecoderConfig) -> ir.Value:
    """[B, S, H·Dh] -> [B, H, S, Dh]"""
    split = ir.Node("", "Reshape", [x, _const(graph, [0, 0, config.num_heads, config.head_dim])], graph=graph)
    return ir.Node("", "Transpose", [split.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])],
                   graph=graph).outputs[0]
