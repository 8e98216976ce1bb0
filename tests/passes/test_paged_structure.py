"""Tier 1: the paged graph's inputs, outputs and pool wiring; refusals name the layer and why."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from pagedc.model_file import load_model
from pagedc import manifest_schema, testing
from pagedc.passes.paged import LAYOUTS, PagedRewriteError, rewrite_to_paged
from pagedc.passes.site import FORMS


def _shapes(values) -> dict[str, list]:
    return {v.name: [d if isinstance(d, int) else str(d) for d in v.shape] for v in values}


@pytest.mark.parametrize("form", FORMS)
def test_separate_layout_abi(dense_model, form):
    model, report = rewrite_to_paged(load_model(dense_model(form)), block_size=8)
    inputs, outputs = _shapes(model.graph.inputs), _shapes(model.graph.outputs)
    assert inputs["block_table"] == ["batch_size", "max_blocks"]
    assert inputs["slot_mapping"] == ["num_tokens"]
    assert inputs["context_lens"] == ["batch_size"]
    assert inputs["position_ids"] == ["batch_size", "sequence_length"]
    kv_heads = 4 if form == "mha" else 2       # MultiHeadAttention has no GQA: the mha reference has 4 KV heads
    for i in range(2):
        assert inputs[f"key_cache.{i}"] == inputs[f"value_cache.{i}"] == ["num_blocks", kv_heads, 8, 16]
        assert outputs[f"key_cache_out.{i}"] == ["num_blocks", kv_heads, 8, 16]
    assert not any("past" in n or n == "attention_mask" for n in inputs)
    assert not any("present" in n for n in outputs)
    grouped = {"grouped attention (repeat-kv removed)": 2} if form == "decomposed" else {}
    assert report.forms == {form: 2} and report.rules == grouped and report.added_position_ids == (form == "gqa")
    assert "Expand" not in {n.op_type for n in model.graph}, "K/V are still repeated per query head"
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_combined_layout_abi(dense_model):
    model, report = rewrite_to_paged(load_model(dense_model("decomposed")), block_size=4, layout="combined")
    inputs = _shapes(model.graph.inputs)
    assert inputs["block_table"] == ["batch_size", 2, "max_blocks"]
    assert inputs["slot_mapping"] == [2, "num_tokens"]
    assert [p.inputs for p in report.pools] == [("kv_cache.0",), ("kv_cache.1",)]
    assert [p.outputs for p in report.pools] == [("kv_cache_out.0",), ("kv_cache_out.1",)]


@pytest.mark.parametrize("layout", ["separate", "combined"])
@pytest.mark.parametrize("form", ["decomposed", "gqa", "attention", "mha"])
def test_pool_goes_straight_through_one_scatter_and_reads_follow_it(dense_model, form, layout):
    """In place under IOBinding: pool -> ScatterND -> output, no Reshape around it; reads use the scatter output."""
    model, report = rewrite_to_paged(load_model(dense_model(form)), layout=layout)
    outputs = {v.name: v for v in model.graph.outputs}
    for pools in report.pools:
        for name in pools.inputs:
            pool = next(v for v in model.graph.inputs if v.name == name)
            (scatter, index), = list(pool.uses())
            assert scatter.op_type == "ScatterND" and index == 0
        for name in pools.outputs:
            producer = outputs[name].producer()
            assert producer.op_type == "ScatterND" and producer.inputs[0].is_graph_input()
            readers = {n.op_type for n, _ in outputs[name].uses()}
            assert readers == {"GatherND"}, readers


def test_a_bias_mask_is_refused_naming_each_layer(bias_mask_model):
    with pytest.raises(PagedRewriteError) as err:
        rewrite_to_paged(load_model(bias_mask_model))
    assert err.value.problems == [
        f"layer {i} (gqa, past_key_values.{i}.key): mask is \"other: attention_bias input 'attention_bias'\"; the "
        "paged mask is causal (optionally windowed): a custom or bias mask would silently change results"
        for i in range(2)
    ]


def test_model_without_kv_cache_is_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(PagedRewriteError, match="no attention layer with a dense KV cache found"):
        rewrite_to_paged(load_model(path))


def test_bad_options_are_refused(dense_model):
    model = load_model(dense_model("decomposed"))
    with pytest.raises(ValueError, match="layout must be one of"):
        rewrite_to_paged(model, layout="interleaved")
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        rewrite_to_paged(model, block_size=0)


@pytest.mark.parametrize(("form", "index", "name"), [
    ("gqa", 11, "head_sink"), ("attention", 6, "nonpad_kv_seqlen"), ("mha", 4, "key_padding_mask")])
def test_an_unsupported_optional_input_is_refused_naming_each_layer(dense_model, form, index, name):
    model = load_model(dense_model(form))
    extra = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape(["batch_size"]))
    model.graph.inputs.append(extra)
    ops = [n for n in model.graph if n.op_type in ("GroupQueryAttention", "Attention", "MultiHeadAttention")]
    for op in ops:
        op.resize_inputs(max(len(op.inputs), index + 1))
        op.replace_input_with(index, extra)
    with pytest.raises(PagedRewriteError) as err:
        rewrite_to_paged(model)
    assert [p.split("): ", 1)[1] for p in err.value.problems] == [f"{ops[0].op_type} with {name} is not supported"] * 2


def test_the_pass_names_the_forms_and_layouts_its_neighbours_name():
    """The pass may import neither the contract nor pagedc.testing (tests/test_import_arrows.py): each keeps its tuple."""
    assert testing.FORMS == FORMS
    assert manifest_schema.LAYOUTS == LAYOUTS
