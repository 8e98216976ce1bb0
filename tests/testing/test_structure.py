"""Tier 1: what the built graphs look like (names, dims, the attention site of each form)."""

import onnx
import pytest
from onnx import helper

from pagedc.testing import DecoderConfig, build_decoder

VARIANTS = {
    "gqa_heads": DecoderConfig(),
    "mqa": DecoderConfig(num_kv_heads=1),
    "mha": DecoderConfig(num_kv_heads=4),
    "window": DecoderConfig(sliding_window=3),
    "fp16": DecoderConfig(dtype="float16"),
}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if name in n.output)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_checker_passes(form, variant):
    onnx.checker.check_model(build_decoder(VARIANTS[variant], form), full_check=True)


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_io_names_and_dims(form):
    config = DecoderConfig(num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=97)
    graph = build_decoder(config, form).graph
    inputs = {i.name: _dims(i) for i in graph.input}
    expected = ["input_ids", "attention_mask"] + (["position_ids"] if form == "decomposed" else [])
    expected += [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert list(inputs) == expected
    assert inputs["input_ids"] == ["batch_size", "sequence_length"]
    assert inputs["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert inputs["past_key_values.1.value"] == ["batch_size", 2, "past_sequence_length", 16]
    outputs = {o.name: _dims(o) for o in graph.output}
    assert list(outputs) == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outputs["logits"] == ["batch_size", "sequence_length", 97]
    assert outputs["present.0.key"] == ["batch_size", 2, "total_sequence_length", 16]


@pytest.mark.parametrize("variant", VARIANTS)
def test_decomposed_attention_site(variant):
    config = VARIANTS[variant]
    model = build_decoder(config, "decomposed")
    ops = [n.op_type for n in model.graph.node]
    for i in range(config.num_layers):
        for kv in ("key", "value"):
            concat = _producer(model, f"present.{i}.{kv}")
            assert concat.op_type == "Concat" and _attrs(concat)["axis"] == -2
            assert concat.input[0] == f"past_key_values.{i}.{kv}"
    assert ops.count("Softmax") == config.num_layers
    assert ops.count("Where") == 1  # one additive mask shared by all layers
    repeat_kv = 0 if config.num_kv_heads == config.num_heads else 2 * config.num_layers
    assert ops.count("Expand") == repeat_kv
    assert ("Greater" in ops) == (config.sliding_window is not None)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert "Constant" in ops
    assert [o.version for o in model.opset_import] == [17]


def test_decomposed_mask_feeds_every_softmax_through_add():
    model = build_decoder(DecoderConfig(), "decomposed")
    mask = next(n for n in model.graph.node if n.op_type == "Where").output[0]
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        add = _producer(model, softmax.input[0])
        assert add.op_type == "Add" and add.input[1] == mask
        assert _producer(model, add.input[0]).op_type == "Mul"  # scale after MatMul(q, Kᵀ)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gqa_attention_site(variant):
    config = VARIANTS[variant]
    model = build_decoder(config, "gqa")
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == config.num_layers
    for i, node in enumerate(gqa):
        assert node.domain == "com.microsoft"
        assert len(node.input) == 12 and list(node.input[9:]) == ["", "", ""]
        assert list(node.input[3:5]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert list(node.output[1:]) == [f"present.{i}.key", f"present.{i}.value"]
        expected = dict(num_heads=4, kv_num_heads=config.num_kv_heads, do_rotary=1, rotary_interleaved=0)
        if config.sliding_window is not None:
            expected["local_window_size"] = config.sliding_window
        attrs = _attrs(node)
        assert {k: attrs[k] for k in attrs if k != "scale"} == expected
        assert attrs["scale"] == pytest.approx(0.25)
    assert len({n.input[5] for n in gqa}) == 1 and len({n.input[6] for n in gqa}) == 1  # computed once
    assert {o.domain: o.version for o in model.opset_import} == {"": 21, "com.microsoft": 1}


def test_gqa_seqlens_subgraph():
    model = build_decoder(DecoderConfig(), "gqa")
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    seqlens_cast = _producer(model, node.input[5])
    assert seqlens_cast.op_type == "Cast" and _attrs(seqlens_cast)["to"] == onnx.TensorProto.INT32
    sub = _producer(model, seqlens_cast.input[0])
    assert sub.op_type == "Sub" and _producer(model, sub.input[0]).op_type == "ReduceSum"
    total_cast = _producer(model, node.input[6])
    gather = _producer(model, total_cast.input[0])
    assert (total_cast.op_type, gather.op_type) == ("Cast", "Gather")
    assert _producer(model, gather.input[0]).input == ["attention_mask"]
    cos = next(t for t in model.graph.initializer if t.name == node.input[7])
    assert list(cos.dims) == [256, 8]  # [max_position_embeddings, Dh/2]


def test_gqa_rejects_head_dim_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_decoder(DecoderConfig(head_dim=8), "gqa")


def test_unknown_form():
    with pytest.raises(ValueError, match="form must be one of"):
        build_decoder(DecoderConfig(), "alibi")
