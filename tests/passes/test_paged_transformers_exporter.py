"""transformers' own exporter (`transformers.exporters.OnnxExporter`): dims, names, masks, prefill graph, verify.

The ragged-batch numerics of these exports run in test_paged_exporters.py and
`pagedc verify` at the medium tier in tests/compiler/test_verify.py, with every
other exporter; this file holds what is particular to them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from pagedc.cli import main
from pagedc.build import CompileOptions, compile_model
from pagedc.model_file import load_model
from pagedc.passes.detect import find_attention_sites
from pagedc.passes.paged import PagedRewriteError, rewrite_to_paged
from pagedc.passes.site import FusedNodes, Mask
from pagedc.verify import verify

KV_HEADS, HEAD_DIM = 2, 32


def test_inspect_prints_the_numeral_dims(exported_model_factory):
    """KV inputs are ['s10', '2', 's54', '32']: the numerals are the KV heads and head dim."""
    result = CliRunner().invoke(main, ["inspect", str(exported_model_factory("llama", "transformers"))])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert [row[:5] for row in rows] == [[str(i), "decomposed", "4", "2", "32"] for i in range(2)]


def _with_symbolic_kv_dims(source, path):
    """The export with KV heads / head dim as real symbols and every inferred shape dropped."""
    model = ir.load(str(source))
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if ".cache.layers." in value.name and value.shape is not None and len(value.shape) == 4:
            value.shape = ir.Shape([value.shape[0], "num_kv_heads", value.shape[2], "head_dim"])
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
    ir.save(model, str(path), external_data=path.name + ".data")
    return path


def test_symbolic_head_dims_are_derived_from_the_head_split(exported_model_factory, tmp_path):
    source = _with_symbolic_kv_dims(exported_model_factory("qwen3", "transformers"), tmp_path / "sym.onnx")
    sites = find_attention_sites(load_model(source)).sites
    assert [(s.num_kv_heads, s.head_dim) for s in sites] == [(KV_HEADS, HEAD_DIM)] * 2
    compile_model(source, tmp_path / "paged", CompileOptions(block_size=4, num_blocks=64, target="onnx", logits="all"))
    report = verify(tmp_path / "paged", source, batch=2, prompt_len=9, decode_steps=3)
    assert report.passed, [(s.step, s.max_abs) for s in report.steps]


def test_prefill_graph_is_refused_pointing_at_decode(exported_model_factory, tmp_path):
    prefill = exported_model_factory("llama", "transformers").parent / "prefill.onnx"
    result = CliRunner().invoke(main, ["compile", str(prefill), "-o", str(tmp_path / "out"), "--target", "onnx"])
    assert result.exit_code == 1
    assert "writes a KV cache (cache.layers.0.keys, cache.layers.0.values, ...) but reads none" in result.output
    assert "decode.onnx" in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_attention_bias_of_fused_batch1_export_is_recognised(exported_model_factory, arch):
    sites = find_attention_sites(load_model(exported_model_factory(arch, "transformers-b1"))).sites
    assert [s.form for s in sites] == ["gqa"] * 2
    assert all(isinstance(s.nodes, FusedNodes) and s.nodes.op.inputs[10] is not None for s in sites)   # the bias is there ...
    assert {s.mask for s in sites} == {Mask.sliding_window(5) if arch == "mistral" else Mask.causal()}  # ... and causal
    assert all(s.nodes.row_guard is not None for s in sites)


def _bias_plus_per_head_constant(model):
    """Add a per-head float constant [1, H, 1, 1] to every layer's attention_bias (an ALiBi-like bias)."""
    for node in list(model.graph):
        if node.op_type == "GroupQueryAttention":
            slopes = ir.Value(name=f"slopes_{node.name}", shape=ir.Shape([1, 4, 1, 1]), type=ir.TensorType(ir.DataType.FLOAT),
                              const_value=ir.tensor(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)))
            model.graph.register_initializer(slopes)
            biased = ir.node("Add", [node.inputs[10], slopes])
            model.graph.insert_before(node, biased)
            node.replace_input_with(10, biased.outputs[0])
    return model


def test_other_bias_is_still_refused_with_layer_and_reason(exported_model_factory):
    model = _bias_plus_per_head_constant(load_model(exported_model_factory("llama", "transformers-b1")))
    with pytest.raises(PagedRewriteError) as err:
        rewrite_to_paged(model, block_size=4)
    assert len(err.value.problems) == 2
    for i, problem in enumerate(err.value.problems):
        assert problem.startswith(f"layer {i} (gqa, input.cache.layers.{i}.keys): mask is \"other: the mask reads "
                                  "the float constant 'slopes_"), problem
        assert "(a learned or per-head bias), not only from attention_mask/position_ids/shapes" in problem
