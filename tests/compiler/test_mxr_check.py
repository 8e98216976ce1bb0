"""check_for_migraphx: one test per rule on a tiny hand-built graph, and the lowered reference decoders pass."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from pagedc.mxr.check import Problem, check_for_migraphx
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.passes.paged import rewrite_to_paged
from pagedc.testing import DecoderConfig, build_decoder

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=21) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return ir.serde.deserialize_model(proto)


def _x(name="x", dims=(2, 4), elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, list(dims))


def _problems(model) -> list[tuple[str, str, str]]:
    return [(p.node, p.op, p.reason) for p in check_for_migraphx(model)]


def test_a_supported_static_graph_has_no_problems():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_x()], [_x("y")])
    assert check_for_migraphx(model) == []


def test_unsupported_op_is_reported():
    model = _model([helper.make_node("Mish", ["x"], ["y"], name="mish")], [_x()], [_x("y")])
    [(node, op, reason)] = _problems(model)
    assert (node, op) == ("mish", "Mish")
    assert "no parser for 'Mish'" in reason and "Unknown operator: Mish" in reason


def test_onnx_attention_is_reported_as_a_name_clash():
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    model = _model([node], [_x("q", (1, 2, 3, 4)), _x("k", (1, 2, 3, 4)), _x("v", (1, 2, 3, 4))],
                   [_x("y", (1, 2, 3, 4))], opset=23)
    reasons = [r for n, op, r in _problems(model) if n == "attn"]
    assert len(reasons) == 1 and "opset-23 Attention" in reasons[0] and "com.microsoft.Attention" in reasons[0]


def test_microsoft_attention_is_not_a_name_clash():
    node = helper.make_node("Attention", ["x", "w"], ["y"], name="attn", domain="com.microsoft", num_heads=1)
    model = _model([node], [_x("x", (1, 2, 4))], [_x("y", (1, 2, 4))],
                   [numpy_helper.from_array(np.zeros((4, 12), np.float32), "w")])
    assert check_for_migraphx(model) == []


def test_supported_name_in_a_foreign_domain_is_reported():
    node = helper.make_node("Relu", ["x"], ["y"], name="relu", domain="my.ops")
    graph = helper.make_graph([node], "g", [_x()], [_x("y")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("my.ops", 1)])
    [(node_name, op, reason)] = _problems(ir.serde.deserialize_model(proto))
    assert (node_name, op) == ("relu", "my.ops::Relu") and "domain 'my.ops' is ignored" in reason


def _gqa(inputs: list[str], **attrs) -> ir.Model:
    node = helper.make_node("GroupQueryAttention", inputs, ["y", "pk", "pv"], name="gqa", domain="com.microsoft",
                            num_heads=2, kv_num_heads=1, **attrs)
    names = [n for n in inputs if n]
    return _model([node], [_x(n, (1, 3)) for n in names], [_x("y", (1, 3))])


def test_gqa_with_twelve_inputs_asks_for_the_trim():
    model = _gqa(["q", "k", "v", "pk_in", "pv_in", "seqlens", "total", "cos", "sin", "", "", ""], do_rotary=1)
    [(node, op, reason)] = _problems(model)
    assert (node, op) == ("gqa", "com.microsoft::GroupQueryAttention")
    assert "12 inputs (3 trailing empty)" in reason and "trim the trailing empty inputs" in reason


def test_gqa_with_too_few_inputs_is_reported():
    [(_, _, reason)] = _problems(_gqa(["q", "k", "v", "pk_in", "pv_in", "seqlens"]))
    assert "has 6 inputs; MIGraphX's parser needs at least 7" in reason


def test_gqa_rotary_without_cos_and_sin_is_reported():
    [(_, _, reason)] = _problems(_gqa(["q", "k", "v", "pk_in", "pv_in", "seqlens", "total"], do_rotary=1))
    assert "do_rotary=1 needs cos_cache and sin_cache" in reason


def test_gqa_with_nine_inputs_passes():
    assert _problems(_gqa(["q", "k", "v", "pk_in", "pv_in", "seqlens", "total", "cos", "sin"], do_rotary=1)) == []


def test_runtime_reshape_shape_is_reported_and_a_constant_one_is_not():
    shape_input = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    runtime = _model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
                     [_x(), shape_input], [_x("y", (4, 2))])
    [(node, op, reason)] = _problems(runtime)
    assert (node, op) == ("reshape", "Reshape") and "input 1 ('shape') is computed at run time" in reason
    shape = numpy_helper.from_array(np.array([4, 2], np.int64), "shape")
    constant = _model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
                      [_x()], [_x("y", (4, 2))], [shape])
    assert check_for_migraphx(constant) == []


def test_unsqueeze_axes_from_a_constant_node_count_as_literal():
    axes = helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64)))
    model = _model([axes, helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")],
                   [_x()], [_x("y", (1, 2, 4))])
    assert check_for_migraphx(model) == []


def test_symbolic_input_dims_are_reported():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x(dims=("batch_size", 4))], [_x("y")])
    [(node, op, reason)] = _problems(model)
    assert (node, op) == ("x", "graph input") and "shape ['batch_size', 4] is not static" in reason


def test_unsupported_dtypes_are_reported():
    cast = helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.FLOAT8E5M2)
    complex_weight = numpy_helper.from_array(np.zeros(2, np.complex64), "c")
    model = _model([cast], [_x(), _x("s", (2,), TensorProto.STRING)], [_x("y", elem=TensorProto.FLOAT8E5M2)],
                   [complex_weight])
    problems = _problems(model)
    assert ("s", "graph input") in [(n, op) for n, op, _ in problems]
    assert ("c", "initializer") in [(n, op) for n, op, _ in problems]
    assert any(n == "cast" and "casts to element type FLOAT8E5M2" in r for n, _, r in problems)


def test_problem_reads_as_one_line():
    assert str(Problem("reshape", "Reshape", "why")) == "Reshape 'reshape': why"


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_lowered_reference_decoders_pass(form, layout):
    model = ir.serde.deserialize_model(build_decoder(DecoderConfig(), form))
    paged, _ = rewrite_to_paged(model, block_size=4, layout=layout)
    assert any(p.op == "graph input" for p in check_for_migraphx(paged)), "dynamic paged model should not pass"
    for bucket in (Bucket("prefill", 2, 8), Bucket("decode", 3, 1)):
        assert check_for_migraphx(lower_paged(paged, bucket, max_blocks=5, num_blocks=32)) == []


def test_dense_genai_model_has_untrimmed_gqa_nodes():
    problems = check_for_migraphx(ir.serde.deserialize_model(build_decoder(DecoderConfig(), "gqa")))
    assert sum("12 inputs (3 trailing empty)" in p.reason for p in problems) == 2
