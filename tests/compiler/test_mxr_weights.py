"""Weights once: the lowered buckets take the weights as inputs, stored once in weights.bin and mapped once."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest

from pagedc.manifest import Artifact
from pagedc.model_file import load_model
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.mxr.weights import ALIGN, MIN_WEIGHT_ELEMENTS, weight_tensors, weights_to_inputs, write_weights
from pagedc.passes.paged import rewrite_to_paged
from pagedc.runtime.sessions.mxr_program import parameter_problems
from pagedc.runtime.sessions.mxr_weights import ProgramWeights, WeightsError


def _lowered(dense_model, buckets):
    model, _ = rewrite_to_paged(load_model(dense_model("gqa")), block_size=4)
    return model, [lower_paged(model, b, max_blocks=4, num_blocks=9) for b in buckets]


def test_every_bucket_takes_the_same_weights_as_inputs_and_keeps_the_small_constants(dense_model):
    model, lowered = _lowered(dense_model, [Bucket("prefill", 1, 8), Bucket("decode", 2, 1)])
    weights = weight_tensors(model)
    assert "model.embed_tokens.weight" in weights and all(t.size >= MIN_WEIGHT_ELEMENTS for t in weights.values())
    moved = [weights_to_inputs(static, weights) for static in lowered]
    assert moved[0] == moved[1] and sorted(moved[0]) == sorted(weights)
    for static in lowered:
        inputs = {v.name: v for v in static.graph.inputs}
        assert all(list(inputs[n].shape) == list(weights[n].shape) for n in moved[0])
        left = [v.const_value.size for v in static.graph.initializers.values()]
        assert left and max(left) < MIN_WEIGHT_ELEMENTS        # shapes, axes, indices stay for the parser


def test_weights_bin_round_trips_aligned_and_shared(dense_model, tmp_path):
    model, _ = _lowered(dense_model, [])
    weights = weight_tensors(model)
    names = sorted(weights)
    note = write_weights(weights, names, {names[0]: "float16"}, tmp_path / "weights.bin")
    loaded = ProgramWeights(tmp_path / "weights.bin", note["tensors"])
    assert all(offset % ALIGN == 0 for offset, _, _ in note["tensors"].values())
    assert loaded.arrays[names[0]].dtype == np.float16
    for name in names[1:]:
        np.testing.assert_array_equal(loaded.arrays[name], weights[name].numpy())
        assert isinstance(loaded.arrays[name].base, np.memmap) and not loaded.arrays[name].flags.writeable
    total = sum(math.prod(dims) * np.dtype(dtype).itemsize for _, dims, dtype in note["tensors"].values())
    assert total <= (tmp_path / "weights.bin").stat().st_size < total + ALIGN * len(names)


def test_a_missing_or_short_weights_file_says_recompile(tmp_path):
    with pytest.raises(WeightsError, match="weights.bin: the manifest lists this weights file but it is missing"):
        ProgramWeights(tmp_path / "weights.bin", {})
    (tmp_path / "weights.bin").write_bytes(b"\0" * 100)
    with pytest.raises(WeightsError, match=r"weight 'w' \[64, 128\) lies beyond the file's 100 bytes.*recompile"):
        ProgramWeights(tmp_path / "weights.bin", {"w": [64, [4, 4], "float32"]})


def test_program_parameters_are_checked_against_the_weights_too():
    artifact = Artifact("decode_b1.mxr", "decode", {"input_ids": [1, 1]}, {"input_ids": "int64"}, ["logits"])
    specs = {"input_ids": ([1, 1], "int64"), "w": ([4, 4], "float32"), "extra": ([2], "float32")}
    assert parameter_problems(specs, artifact, weights={"w": ([4, 4], "float32")}) == [
        "the program has parameter 'extra' [2] that the manifest does not list"]
    assert parameter_problems(specs, artifact, weights={"w": ([4, 8], "float16"), "extra": ([2], "float32")}) == [
        "parameter 'w' has dims [4, 4], the manifest says [4, 8]",
        "parameter 'w' has dtype float32, the manifest says float16"]


def test_a_weight_name_holding_another_tensor_stays_embedded():
    graph = ir.Graph([], [], nodes=[], name="g")
    value = ir.Value(name="w", const_value=ir.tensor(np.ones((64, 32), np.float32)))
    graph.register_initializer(value)
    model = ir.Model(graph, ir_version=10)
    other = {"w": ir.tensor(np.zeros((64, 32), np.float32))}
    assert weights_to_inputs(model, other) == [] and "w" in model.graph.initializers


@pytest.mark.parametrize("device,offload_copy,is_shared", [("ref", True, True), ("cpu", True, True),
                                                          ("gpu", True, False), ("gpu", False, True)])
def test_weights_are_shared_except_where_offload_copy_would_upload_them_every_step(dense_model, device,
                                                                                 offload_copy, is_shared):
    from pagedc.build import CompileOptions
    from pagedc.mxr.compile import plan_mxr
    source = dense_model("gqa")
    model, _ = rewrite_to_paged(load_model(source), block_size=4)
    options = CompileOptions(target="mxr", device=device, offload_copy=offload_copy, block_size=4, num_blocks=32,
                             prefill_lens=(8,), batches=(1,), max_context=16, emit_standard=True)
    plan = plan_mxr(source, model, 32, options, progress=lambda _: None)
    names = [item.weight_names for item in plan.paged + plan.standard]
    assert all(names) if is_shared else not any(names)
    if is_shared:   # the dense model's weights are the paged model's: one entry each
        assert set(names[0]) == set(names[-1]) and "model.embed_tokens.weight" in names[-1]


def test_fp16_weights_are_half_inputs_cast_to_float_and_compute_the_same(dense_model, tmp_path):
    from pagedc.mxr.compile import write_lowered
    from pagedc.runtime.feeds import SequenceStep, step_feeds
    from tests.paged_harness import session
    model, [full, half] = _lowered(dense_model, [Bucket("prefill", 1, 8), Bucket("prefill", 1, 8)])
    weights = weight_tensors(model)
    logits = []
    for name, static, is_half in (("full", full, False), ("half", half, True)):
        names = weights_to_inputs(static, weights, half=is_half)
        dtypes = {v.name: v.dtype.numpy().name for v in static.graph.inputs if v.name in names}
        assert set(dtypes.values()) == ({"float16"} if is_half else {"float32"})
        note = write_weights(weights, names, dtypes, tmp_path / f"{name}.bin")
        arrays = ProgramWeights(tmp_path / f"{name}.bin", note["tensors"]).arrays
        write_lowered(static, tmp_path / f"{name}.onnx", copy_weights=True)
        feeds = step_feeds([SequenceStep([3, 1, 5, 2], list(range(8)))], 4)     # MB 4 columns, 9 blocks
        feeds["input_ids"] = np.arange(1, 9, dtype=np.int64)[None]
        pools = {v.name: np.zeros([int(d) for d in v.shape], np.float32) for v in static.graph.inputs
                 if "cache" in v.name}
        logits.append(session(tmp_path / f"{name}.onnx").run(["logits"], {**feeds, **pools, **arrays})[0])
    assert (tmp_path / "half.bin").stat().st_size < 0.6 * (tmp_path / "full.bin").stat().st_size
    np.testing.assert_allclose(logits[1], logits[0], atol=2e-2, rtol=0)
    assert not np.array_equal(logits[1], logits[0])        # the weights really were rounded to half
