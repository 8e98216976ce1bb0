"""`pagedc compile --target mxr|auto`: what happens without MIGraphX, checker failures, options; the manifest fields."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from pagedc.cli import main
from pagedc.manifest import Artifact, LayerPools, Manifest
from pagedc.runtime.sessions.migraphx_import import is_migraphx_available
from pagedc.testing import DecoderConfig, build_decoder

needs_no_migraphx = pytest.mark.skipif(is_migraphx_available(), reason="MIGraphX is installed: mxr would compile")


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _source(tmp_path, model=None):
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model or build_decoder(DecoderConfig(), "gqa"), str(path))
    return path


@needs_no_migraphx
def test_target_mxr_without_migraphx_names_what_to_install_and_writes_nothing(tmp_path):
    source = _source(tmp_path)
    result = _run("compile", source, "-o", tmp_path / "out", "--target", "mxr", "--num-blocks", "64",
                  "--block-size", "4", "--prefill-len", "8")
    assert result.exit_code == 1
    assert "checked 2 lowered graph(s) for MIGraphX's ONNX parser: no problems" in result.stderr
    assert "MIGraphX's Python module is not importable" in result.stderr
    assert "PYTHONPATH=/opt/rocm/lib" in result.stderr and "Nothing was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@needs_no_migraphx
def test_target_auto_without_migraphx_compiles_for_onnx_runtime_and_says_so(tmp_path):
    result = _run("compile", _source(tmp_path), "-o", tmp_path / "out", "--num-blocks", "16")
    assert result.exit_code == 0, result.output
    assert "target auto: MIGraphX is not importable, compiling for ONNX Runtime (--target onnx)" in result.stderr
    assert Manifest.read(tmp_path / "out").backend == "onnxruntime"


def test_a_model_the_parser_would_reject_fails_the_check_and_writes_nothing(tmp_path):
    model = build_decoder(DecoderConfig(), "decomposed")
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "raw_logits"
    model.graph.node.append(helper.make_node("Mish", ["raw_logits"], ["logits"], name="mish_head"))
    result = _run("compile", _source(tmp_path, model), "-o", tmp_path / "out", "--target", "mxr",
                  "--num-blocks", "64", "--block-size", "4", "--prefill-len", "8", "--batch", "2")
    assert result.exit_code == 1
    assert "MIGraphX's ONNX parser would reject the lowered model (2 problem(s))" in result.stderr
    assert "prefill_b2_s8 (prefill_b2_s8.mxr): Mish 'mish_head': MIGraphX's ONNX parser has no parser for 'Mish'" \
        in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_emit_standard_needs_the_mxr_target(tmp_path):
    result = _run("compile", _source(tmp_path), "-o", tmp_path / "out", "--target", "onnx", "--emit-standard")
    assert result.exit_code == 1
    assert "--emit-standard writes standard_*.mxr and needs the MIGraphX target (--target mxr)" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--prefill-len", "64", "--max-context", "32"], "--max-context 32 is shorter than --prefill-len 64"),
    (["--prefill-len", "8", "--max-context", "4096"], "--max-context 4096 exceeds what one sequence can hold in "
                                                      "the pool (16 blocks of 4: 60 tokens)"),
    (["--prefill-len", "64"], "the pool's 60 tokens per sequence is shorter than --prefill-len 64"),
])
def test_bucket_sizes_that_do_not_fit_the_pool_are_refused(tmp_path, args, message):
    result = _run("compile", _source(tmp_path), "-o", tmp_path / "out", "--target", "mxr", "--num-blocks", "16",
                  "--block-size", "4", *args)
    assert result.exit_code == 1 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_target_and_device_are_usage_errors(tmp_path):
    source = _source(tmp_path)
    assert _run("compile", source, "--target", "tensorrt").exit_code == 2
    result = _run("compile", source, "--target", "mxr", "--device", "npu")
    assert result.exit_code == 2 and "'npu' is not one of 'gpu', 'ref', 'cpu'" in result.stderr


def test_manifest_round_trips_the_static_fields(tmp_path):
    pools = LayerPools(0, ("key_cache.0", "value_cache.0"), ("key_cache_out.0", "value_cache_out.0"))
    artifact = Artifact("decode_b1.mxr", "decode", {"input_ids": [1, 1], "key_cache.0": [8, 1, 4, 8],
                                                    "value_cache.0": [8, 1, 4, 8]},
                        {"input_ids": "int64", "key_cache.0": "float32", "value_cache.0": "float32"}, ["logits"])
    manifest = Manifest(backend="migraphx", target="gpu", source_model="m.onnx", source_sha256="0", num_layers=1,
                        num_heads=1, num_kv_heads=1, head_dim=8, kv_dtype="float32", block_size=4, num_blocks=8,
                        layout="separate", pools=(pools,), artifacts=(artifact,), max_context=32,
                        backend_options={"offload_copy": True, "fp16": False},
                        standard_artifacts=(dataclasses.replace(artifact, path="standard_decode_b1.mxr"),),
                        standard={"kv": "shared_buffer", "max_context": 32})
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest


def test_manifests_without_the_static_fields_still_load(tmp_path):
    result = _run("compile", _source(tmp_path), "-o", tmp_path / "out", "--target", "onnx", "--num-blocks", "16")
    assert result.exit_code == 0
    path = tmp_path / "out" / "manifest.json"
    text = path.read_text()
    for key in ('"max_context"', '"backend_options"', '"standard_artifacts"', '"standard"', '"outputs"'):
        assert key in text
    data = json.loads(text)
    for key in ("max_context", "backend_options", "standard_artifacts", "standard"):
        del data[key]
    for artifact in data["artifacts"]:
        del artifact["outputs"]
    path.write_text(json.dumps(data))
    manifest = Manifest.read(path)
    assert manifest.standard_artifacts == () and manifest.artifacts[0].outputs == []
