"""Detection front end on the reference decoders and on graphs that are not decoders."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from pagedc.model_file import load_model
from pagedc.passes.detect import find_attention_sites
from pagedc.passes.site import Mask


@pytest.mark.parametrize("form", ["decomposed", "gqa", "attention"])
@pytest.mark.parametrize("heads,kv_heads,layers", [(4, 2, 2), (4, 1, 3), (4, 4, 1)], ids=["gqa", "mqa", "mha"])
def test_every_layer_found_with_its_shape(dense_model, form, heads, kv_heads, layers):
    path = dense_model(form, num_heads=heads, num_kv_heads=kv_heads, num_layers=layers, head_dim=16, hidden_size=64)
    detection = find_attention_sites(load_model(path))
    assert detection.misses == []
    assert [s.layer for s in detection.sites] == list(range(layers))
    for i, site in enumerate(detection.sites):
        assert (site.form, site.num_heads, site.num_kv_heads, site.head_dim) == (form, heads, kv_heads, 16)
        assert (site.past_key, site.past_value) == (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
        assert (site.present_key, site.present_value) == (f"present.{i}.key", f"present.{i}.value")
        assert site.mask == Mask.causal() and str(site.mask) == "causal"


def test_rotary_location_is_reported(dense_model):
    decomposed = find_attention_sites(load_model(dense_model("decomposed"))).sites[0]
    gqa = find_attention_sites(load_model(dense_model("gqa"))).sites[0]
    assert decomposed.rotary == "rotate_half on q/k, positions from position_ids"
    assert gqa.rotary == "inside GroupQueryAttention (do_rotary=1), positions from seqlens_k"


@pytest.mark.parametrize("form", ["decomposed", "gqa", "attention"])
def test_sliding_window_is_reported_with_its_size(dense_model, form):
    sites = find_attention_sites(load_model(dense_model(form, sliding_window=3))).sites
    assert [s.mask for s in sites] == [Mask.sliding_window(3)] * 2
    assert [str(s.mask) for s in sites] == ["sliding window 3"] * 2


def _save(tmp_path, nodes, inputs, outputs, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_model_without_kv_cache_has_no_sites(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    path = _save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"])], [x], [y])
    detection = find_attention_sites(load_model(path))
    assert detection.sites == [] and detection.misses == []
    assert detection.found_instead == {"Softmax": 1}


def test_kv_input_feeding_an_unknown_pattern_is_a_miss(tmp_path):
    past = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [1, 2, "P", 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = _save(tmp_path, [helper.make_node("Relu", ["past_key_values.0.key"], ["y"])], [past], [out])
    detection = find_attention_sites(load_model(path))
    assert detection.sites == []
    assert [m.value for m in detection.misses] == ["past_key_values.0.key"]
    assert "Relu" in detection.misses[0].reason


def test_a_mask_reads_back_as_inspect_shows_it_and_refuses_a_window_on_the_wrong_kind():
    assert [str(m) for m in (Mask.causal(), Mask.sliding_window(4), Mask.other("bias input 'b'"))] == [
        "causal", "sliding window 4", "other: bias input 'b'"]
    assert Mask.sliding_window(4).window == 4 and Mask.causal().window is None
    assert not Mask.other("x").is_pageable and Mask.sliding_window(4).is_pageable
    with pytest.raises(ValueError, match="a window goes with kind 'sliding_window' only"):
        Mask("causal", window=4)
    with pytest.raises(ValueError, match="mask kind must be one of"):
        Mask("alibi")
