"""Form C reference: the decomposed decoder with each layer's attention as one ONNX `Attention` (opset 23).

    Attention(Q [B,H,S,Dh], K [B,Hkv,S,Dh], V, attn_mask [B,1,S,T] additive, past_key, past_value)
        -> (Y [B,H,S,Dh], present_key [B,Hkv,T,Dh], present_value)

Built from form A by replacing, per layer, Concat(past, new) -> repeat-kv ->
MatMul -> scale -> Add(mask) -> Softmax -> MatMul with that one op (the same
math: default scale 1/sqrt(Dh), GQA by kv_num_heads), as newer exporters emit
it. The graph is first converted to opset 23 with ONNX's version converter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from pagedc.passes.detect import find_attention_sites
from pagedc.testing.config import DecoderConfig
from pagedc.testing.decomposed import build_decomposed

OPSET = 23


def build_attention(config: DecoderConfig, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = ir.from_proto(onnx.version_converter.convert_version(build_decomposed(config, weights), OPSET))
    graph = model.graph
    for site in find_attention_sites(model).sites:
        key_concat, value_concat = site.nodes["key_concat"], site.nodes["value_concat"]
        inputs = [site.nodes["qk_matmul"].inputs[0], key_concat.inputs[1], value_concat.inputs[1],
                  site.values["mask"], key_concat.inputs[0], value_concat.inputs[0]]
        node = ir.Node("", "Attention", inputs, num_outputs=3, graph=graph,
                       attributes=[ir.AttrInt64("q_num_heads", config.num_heads),
                                   ir.AttrInt64("kv_num_heads", config.num_kv_heads)])
        site.nodes["pv_matmul"].outputs[0].replace_all_uses_with(node.outputs[0])
        for concat, present in ((key_concat, node.outputs[1]), (value_concat, node.outputs[2])):
            index = next(i for i, v in enumerate(graph.outputs) if v is concat.outputs[0])
            present.name, concat.outputs[0].name = concat.outputs[0].name, None
            present.dtype, present.shape = concat.outputs[0].dtype, concat.outputs[0].shape
            graph.outputs[index] = present
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    return ir.to_proto(model)
