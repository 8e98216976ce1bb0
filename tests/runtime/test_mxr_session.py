"""MIGraphX session: parameter checks, refusals, and (only where MIGraphX is installed) a real run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pagedc.build import CompileOptions, compile_model
from pagedc.errors import ManifestError
from pagedc.manifest import Artifact, LayerPools, Manifest
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from pagedc.runtime.feeds import SequenceStep, step_feeds
from pagedc.runtime.sessions.migraphx_import import MigraphxUnavailable, is_migraphx_available
from pagedc.runtime.sessions.mxr_program import MxrProgramError, parameter_problems
from pagedc.runtime.sessions.mxr import load_mxr_session
from tests.paged_harness import DenseRunner

ARTIFACT = Artifact("decode_b1.mxr", "decode", {"input_ids": [1, 1], "key_cache.0": [8, 2, 4, 16]},
                    {"input_ids": "int64", "key_cache.0": "float32"}, ["logits", "key_cache_out.0"])


def _manifest(**changes) -> Manifest:
    manifest = Manifest(backend="migraphx", target="ref", source_model="m.onnx", source_sha256="", num_layers=1,
                        num_heads=4, num_kv_heads=2, head_dim=16, kv_dtype="float32", block_size=4, num_blocks=8,
                        layout="separate", pools=(LayerPools(0, ("key_cache.0",), ("key_cache_out.0",)),),
                        artifacts=(ARTIFACT,), backend_options={"offload_copy": True})
    return dataclasses.replace(manifest, **changes)


def test_matching_parameters_have_no_problems():
    specs = {"input_ids": ([1, 1], "int64"), "key_cache.0": ([8, 2, 4, 16], "float32")}
    assert parameter_problems(specs, ARTIFACT) == []


def test_parameter_differences_are_each_named():
    specs = {"input_ids": ([1, 2], "int32"), "position_ids": ([1, 1], "int64")}
    assert parameter_problems(specs, ARTIFACT) == [
        "the manifest lists input 'key_cache.0', the program has no such parameter",
        "the program has parameter 'position_ids' [1, 1] that the manifest does not list",
        "parameter 'input_ids' has dims [1, 2], the manifest says [1, 1]",
        "parameter 'input_ids' has dtype int32, the manifest says int64",
    ]
    assert len(parameter_problems(specs, ARTIFACT, check_dtypes=False)) == 3


def test_session_refuses_other_backends_and_device_buffers():
    with pytest.raises(MxrProgramError, match="the manifest is for onnxruntime"):
        load_mxr_session(_manifest(backend="onnxruntime"), ".")
    with pytest.raises(MxrProgramError, match="--no-offload-copy .* recompile with --offload-copy"):
        load_mxr_session(_manifest(backend_options={"offload_copy": False}), ".")


@pytest.mark.skipif(is_migraphx_available(), reason="MIGraphX is installed here")
def test_without_migraphx_the_session_says_what_to_install():
    with pytest.raises(MigraphxUnavailable, match="PYTHONPATH=/opt/rocm/lib"):
        load_mxr_session(_manifest(), ".")


def test_bucketed_session_needs_the_outputs_recorded():
    old = dataclasses.replace(ARTIFACT, outputs=[])
    with pytest.raises(ManifestError, match=r"without \['logits', 'key_cache_out.0'\]; recompile"):
        BucketedPagedSession(_manifest(artifacts=(old,)), {old.path: lambda inputs: []})


def test_mxr_session_matches_the_dense_model(dense_model, tmp_path):
    pytest.importorskip("migraphx", reason="MIGraphX (ROCm's Python module) is not installed; nothing to run")
    dense = dense_model("gqa")
    options = CompileOptions(target="mxr", device="ref", block_size=4, num_blocks=32, prefill_lens=(8,),
                             batches=(1,), max_context=16, logits="all")
    manifest = compile_model(dense, tmp_path / "out", options, progress=lambda _: None)
    session = load_mxr_session(manifest, tmp_path / "out")
    prompt, blocks = [5, 17, 3, 9, 60], [3, 1, 7, 2]     # shuffled, non-contiguous
    got = []
    for positions, tokens in [(list(range(5)), prompt), ([5], [11]), ([6], [12])]:
        feeds = step_feeds([SequenceStep(blocks, positions)], 4)
        feeds["input_ids"] = np.asarray([tokens], np.int64)
        got.append(session.run(feeds)[0])
    want = DenseRunner(dense).run(prompt + [11, 12], [5, 1, 1])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-3, rtol=0)
