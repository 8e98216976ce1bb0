"""lower_paged / lower_static: static inputs, shapes folded, source untouched, weights never loaded."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from pagedc.model_file import load_model
from pagedc.mxr.compile import write_lowered
from pagedc.mxr.lowering import Bucket, LoweringError, buckets_for, lower_paged, lower_static, trim_gqa_inputs
from pagedc.passes.paged import rewrite_to_paged
from pagedc.testing import DecoderConfig, build_decoder


def _paged(form="decomposed", layout="separate", block_size=4):
    model = ir.serde.deserialize_model(build_decoder(DecoderConfig(), form))
    return rewrite_to_paged(model, block_size=block_size, layout=layout)[0]


def _shapes(model: ir.Model) -> dict[str, list]:
    return {v.name: list(v.shape) for v in model.graph.inputs}


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_inputs_get_the_bucket_shapes(layout):
    lowered = lower_paged(_paged(layout=layout), Bucket("prefill", 3, 8), max_blocks=5, num_blocks=40)
    shapes = _shapes(lowered)
    assert shapes["input_ids"] == shapes["position_ids"] == [3, 8]
    assert shapes["context_lens"] == [3]
    if layout == "separate":
        assert shapes["block_table"] == [3, 5] and shapes["slot_mapping"] == [24]
        assert shapes["key_cache.0"] == shapes["value_cache.1"] == [40, 2, 4, 16]   # [NB, Hkv, bs, Dh]
    else:
        assert shapes["block_table"] == [3, 2, 5] and shapes["slot_mapping"] == [2, 24]
        assert shapes["kv_cache.1"] == [40, 2, 4, 16]
    assert [list(v.shape) for v in lowered.graph.outputs][0] == [3, 8, 97]      # logits inferred static


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_shape_computations_are_folded_away(form):
    paged = _paged(form)
    assert {"Shape", "Range"} <= {n.op_type for n in paged.graph}
    lowered = lower_paged(paged, Bucket("decode", 2, 1), max_blocks=4, num_blocks=16)
    ops = {n.op_type for n in lowered.graph}
    assert not ops & {"Shape", "Range", "ConstantOfShape"}
    assert all(n.inputs[1].const_value is not None for n in lowered.graph if n.op_type == "Expand")
    assert {"ScatterND", "GatherND", "Softmax"} <= ops                           # the data path stays


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_index_broadcasts_avoid_what_migraphx_simplify_algebra_rejects(layout):
    """Add(x, zeros) and Mul(x, 0) + c (index tuples) throw in MIGraphX f729a52's simplify_algebra at a
    leading dim of 2; the lowering writes them as Expand and as constants."""
    paged = _paged("gqa", layout)
    lowered = lower_paged(paged, Bucket("prefill", 2, 8), max_blocks=4, num_blocks=16)
    for node in lowered.graph:
        if node.op_type in ("Add", "Mul") and node.inputs[0].dtype.is_integer():
            constants = [v.const_value for v in node.inputs if v.const_value is not None]
            assert not any(not c.numpy().any() for c in constants), node


def test_the_source_model_is_not_changed():
    paged = _paged()
    before = (_shapes(paged), [n.op_type for n in paged.graph])
    lower_paged(paged, Bucket("prefill", 2, 8), max_blocks=4, num_blocks=16)
    assert (_shapes(paged), [n.op_type for n in paged.graph]) == before
    assert paged.graph.inputs[0].shape[0] == ir.SymbolicDim("batch_size")


def test_weights_stay_external_and_unloaded(tmp_path):
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save(build_decoder(DecoderConfig(), "decomposed"), str(source), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=256)
    paged, _ = rewrite_to_paged(load_model(source), block_size=4)
    lowered = lower_paged(paged, Bucket("prefill", 2, 8), max_blocks=4, num_blocks=16)
    external = [v.const_value for v in lowered.graph.initializers.values()
                if isinstance(v.const_value, ir.ExternalTensor)]
    assert len(external) > 10
    assert all(t._array is None for t in external), "lowering read weight data"
    out = tmp_path / "work" / "prefill.onnx"
    out.parent.mkdir()
    write_lowered(lowered, out)
    assert all(t._array is None for t in external), "saving read weight data"
    link = out.parent / "model.onnx.data"
    assert link.is_symlink() and link.resolve() == (source.parent / "model.onnx.data").resolve()
    assert (source.parent / "model.onnx.data").stat().st_nlink == 1        # onnx_ir refuses hard-linked data
    saved = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer if t.name in
               {v.name for v in lowered.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)})


def test_gqa_trailing_empty_inputs_are_trimmed():
    dense = ir.serde.deserialize_model(build_decoder(DecoderConfig(), "gqa"))
    assert trim_gqa_inputs(dense) == 2
    assert [len(n.inputs) for n in dense.graph if n.op_type == "GroupQueryAttention"] == [9, 9]
    assert trim_gqa_inputs(dense) == 0


def test_an_unknown_symbolic_dim_is_an_error_naming_the_input():
    paged = _paged()
    extra = ir.Value(name="token_type_ids", type=ir.TensorType(ir.DataType.INT64),
                     shape=ir.Shape([ir.SymbolicDim("batch"), ir.SymbolicDim("seq")]))
    paged.graph.inputs.append(extra)
    with pytest.raises(LoweringError, match="input 'token_type_ids' dim 0 is 'batch'; pagedc knows the static sizes"):
        lower_paged(paged, Bucket("decode", 1, 1), max_blocks=4, num_blocks=16)


def test_lower_static_takes_explicit_shapes():
    dense = ir.serde.deserialize_model(build_decoder(DecoderConfig(), "decomposed"))
    shapes = {"input_ids": [1, 4], "position_ids": [1, 4], "attention_mask": [1, 4],
              **{v.name: [1, 2, 0, 16] for v in dense.graph.inputs if v.name.startswith("past")}}
    lowered = lower_static(dense, shapes)
    assert all(v.shape.is_static() for v in lowered.graph.inputs)
    assert "Range" not in {n.op_type for n in lowered.graph}


def test_buckets_are_prefill_then_decode_per_batch():
    names = [b.name for b in buckets_for((4, 1, 4), (128, 32))]
    assert names == ["prefill_b1_s32", "prefill_b1_s128", "prefill_b4_s32", "prefill_b4_s128", "decode_b1", "decode_b4"]
