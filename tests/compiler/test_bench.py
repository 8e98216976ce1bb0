"""`pagedc bench`: kind detection for every kind, the report's fields, the errors; no timing asserts."""

from __future__ import annotations

import dataclasses
import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from pagedc.bench.kind import PAGED_COMBINED, PAGED_SEPARATE, STANDARD, detect, kind_from_inputs
from pagedc.cli import main
from pagedc.build import CompileOptions, compile_model
from pagedc.errors import BackendError, ManifestError, RequestError
from pagedc.manifest import Manifest
from pagedc.mxr.lowering import Bucket
from pagedc.runtime.sessions.migraphx_import import is_migraphx_available
from pagedc.testing import DecoderConfig, build_decoder
from tests.compiler.mxr_harness import standard_manifest, static_paged_session

FAST = ("--repeats", "2", "--warmup", "1", "--prefill-len", "8", "--context", "12", "--decode-steps", "3")
needs_no_migraphx = pytest.mark.skipif(is_migraphx_available(), reason="MIGraphX is installed: the .mxr would load")


def _run(*args):
    return CliRunner().invoke(main, ["bench", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, dense_model):
    cache = {}

    def build(form: str, layout: str = "separate"):
        if (form, layout) not in cache:
            out = tmp_path_factory.mktemp("bench") / f"{form}-{layout}.paged"
            compile_model(dense_model(form), out, CompileOptions(block_size=4, layout=layout, num_blocks=64),
                          progress=lambda _: None)
            cache[form, layout] = out
        return cache[form, layout]
    return build


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory, dense_model):
    """A MIGraphX-shaped compile output (static buckets, backend migraphx) whose artifacts are lowered .onnx."""
    out = tmp_path_factory.mktemp("static")
    session = static_paged_session(dense_model("gqa"), out, [Bucket("prefill", 1, 8), Bucket("decode", 1, 1)],
                                   layout="separate", block_size=4, num_blocks=32, max_context=24)
    session.manifest.write(out)
    return out


@pytest.mark.parametrize("layout,kind", [("separate", PAGED_SEPARATE), ("combined", PAGED_COMBINED)])
def test_compile_outputs_are_paged_of_their_layout_by_any_of_their_paths(compiled, layout, kind):
    out = compiled("decomposed", layout)
    for path in (out, out / "manifest.json", out / "model.onnx"):
        found = detect(path)
        assert (found.kind, found.backend, found.buckets) == (kind, "onnxruntime", ())
        assert found.max_positions == DecoderConfig.max_position_embeddings   # the rotary table's rows
    assert detect(out).title == f"Paged ({layout} K/V), onnxruntime, dynamic shapes, logits of the last new token only"


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_a_dense_onnx_is_standard(dense_model, form):
    found = detect(dense_model(form))
    assert (found.kind, found.backend, found.manifest, found.max_positions) == (STANDARD, "onnxruntime", None, 256)


def test_static_buckets_are_listed(static_dir):
    found = detect(static_dir)
    assert (found.kind, found.backend) == (PAGED_SEPARATE, "migraphx")
    assert found.buckets == ("prefill [B=1, S=8, max_blocks=6]", "decode [B=1, S=1, max_blocks=6]")


def test_mxr_kinds_come_from_the_parameters(dense_model, tmp_path):
    """The rule `.mxr` files are detected by, over the inputs of real lowered (static) artifacts."""
    buckets = [Bucket("prefill", 1, 8), Bucket("decode", 1, 1)]
    for layout, kind in (("separate", PAGED_SEPARATE), ("combined", PAGED_COMBINED)):
        (tmp_path / layout).mkdir()
        session = static_paged_session(dense_model("gqa"), tmp_path / layout, buckets, layout=layout, block_size=4,
                                       num_blocks=32, max_context=24)
        assert {kind_from_inputs(a.inputs) for a in session.manifest.artifacts} == {kind}
    manifest, _ = standard_manifest(dense_model("gqa"), tmp_path, buckets, 24)
    assert {kind_from_inputs(a.inputs) for a in manifest.standard_artifacts} == {STANDARD}


@needs_no_migraphx
def test_an_mxr_without_migraphx_says_what_to_install(static_dir, tmp_path):
    manifest = Manifest.read(static_dir)
    mxr = dataclasses.replace(manifest.artifacts[0], path="prefill_b1_s8.mxr")
    dataclasses.replace(manifest, artifacts=(mxr, *manifest.artifacts[1:])).write(tmp_path)
    (tmp_path / mxr.path).write_bytes(b"not loaded")
    with pytest.raises(BackendError, match="MIGraphX's Python module is not importable.*PYTHONPATH=/opt/rocm/lib"):
        detect(tmp_path / mxr.path)
    result = _run(tmp_path / mxr.path)
    assert result.exit_code == 1 and "Error: MIGraphX's Python module is not importable" in result.stderr


def test_an_mxr_needs_its_manifest(tmp_path):
    (tmp_path / "model.mxr").write_bytes(b"")
    with pytest.raises(ManifestError, match="no manifest.json beside it"):
        detect(tmp_path / "model.mxr")


def test_mxr_compile_outputs_bench_paged_and_standard(dense_model, tmp_path):
    pytest.importorskip("migraphx", reason="MIGraphX (ROCm's Python module) is not installed; nothing to run")
    # the standard side prefills the whole --context (12 tokens) before timing decode steps
    options = CompileOptions(target="mxr", device="ref", block_size=4, num_blocks=32, prefill_lens=(8, 12),
                             batches=(1,), max_context=24, emit_standard=True)
    compile_model(dense_model("gqa"), tmp_path / "out", options, progress=lambda _: None)
    paged, standard = tmp_path / "out" / "prefill_b1_s8.mxr", tmp_path / "out" / "standard_prefill_b1_s8.mxr"
    assert (detect(paged).kind, detect(standard).kind) == (PAGED_SEPARATE, STANDARD)
    result = _run(paged, standard, *FAST, "--json")
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    assert [(m["kind"], m["logits"]) for m in models] == [(PAGED_SEPARATE, "last"), (STANDARD, "all")]


def test_json_report_fields(compiled, dense_model):
    out = compiled("gqa")
    result = _run(out, compiled("gqa", "combined"), dense_model("gqa"), *FAST, "--batch", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["options"] == {"prefill_len": 8, "batch": 2, "decode_steps": 3, "context": 12, "repeats": 2,
                                 "warmup": 1, "threads": 0, "seed": 0}
    models = report["models"]
    assert [m["kind"] for m in models] == [PAGED_SEPARATE, PAGED_COMBINED, STANDARD]
    assert [m["logits"] for m in models] == ["last", "last", "all"]
    manifest = Manifest.read(out)
    assert models[0]["pool"] == {"num_blocks": 64, "block_size": 4, "bytes": manifest.bytes_per_block() * 64}
    assert models[2]["pool"] is None
    for model in models:
        prefill, decode = model["prefill"], model["decode"]
        assert (prefill["num_steps"], prefill["tokens_per_step"]) == (2, 16)          # repeats; B * N
        assert (decode["num_steps"], decode["tokens_per_step"]) == (2 * 3, 2)         # repeats * K; B
        for phase in (prefill, decode):
            assert phase["min_ms"] <= phase["median_ms"] <= phase["max_ms"]
            assert phase["tokens_per_s"] == pytest.approx(phase["tokens_per_step"] * 1e3 / phase["avg_ms"])
    assert models[0]["prefill"]["ratio_to_first"] == models[0]["decode"]["ratio_to_first"] == 1.0
    assert models[2]["decode"]["ratio_to_first"] == pytest.approx(
        models[2]["decode"]["median_ms"] / models[0]["decode"]["median_ms"])
    assert "decode round 2/2" in result.stderr


def test_table_prints_each_model_then_each_phase(compiled, dense_model):
    result = _run(compiled("decomposed"), dense_model("decomposed"), *FAST, "--prefill-len", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "Model type: Paged (separate K/V), onnxruntime, dynamic shapes, logits of the last new token only"
    assert lines[2] == "Pool: 64 blocks x 4 tokens per layer, 0.1 MiB in all"
    assert lines[4] == "Model type: Standard (dense KV cache), onnxruntime, dynamic shapes"
    assert lines[6] == "=== Decode [B=1, 1] x 3 steps at context 12; 2 rounds after 1 warm-up ==="
    assert lines[7].split() == "model avg ms min ms max ms median ms tokens/s x first".split()
    assert len(lines) == 10 and "Prefill" not in result.stdout


def test_context_beyond_the_models_positions(dense_model):
    result = _run(dense_model("gqa"), "--context", "250", "--decode-steps", "10")
    assert result.exit_code == 1
    assert ("--context plus --decode-steps reach 260 tokens per sequence; the model encodes 256 positions"
            in result.stderr)


def test_context_beyond_the_pool(compiled):
    result = _run(compiled("decomposed"), "--batch", "2", "--context", "120", "--prefill-len", "0")
    assert result.exit_code == 1
    assert ("2 sequence(s) need 76 blocks of 4 tokens, the pool has 63 (64 blocks, block 0 is the null block); "
            "lower --batch / --context / --decode-steps or recompile with a larger --num-blocks") in result.stderr


def test_prefill_outside_every_bucket(static_dir):
    result = _run(static_dir, "--prefill-len", "9", "--context", "8", "--decode-steps", "4")
    assert result.exit_code == 1
    assert "Error: " in result.stderr
    assert "the prefill step [B=1, S=9, max_blocks=3] fits no compiled bucket" in result.stderr
    assert "prefill [B=1, S=8, max_blocks=6]" in result.stderr
    result = _run(static_dir, "--prefill-len", "8", "--context", "20", "--decode-steps", "8")
    assert result.exit_code == 1 and "one sequence may span 24 tokens (max_context)" in result.stderr


@needs_no_migraphx
def test_static_outputs_that_fit_need_migraphx_to_run(static_dir):
    result = _run(static_dir, "--prefill-len", "8", "--context", "8", "--decode-steps", "4")
    assert result.exit_code == 1 and "PYTHONPATH=/opt/rocm/lib" in result.stderr


def test_bad_paths(tmp_path, compiled, dense_model):
    assert _run(tmp_path / "missing").exit_code == 2
    (tmp_path / "notes.txt").write_text("hello")
    result = _run(tmp_path / "notes.txt")
    assert result.exit_code == 1 and "not a compile output directory, manifest.json, .mxr or .onnx" in result.stderr
    shutil.copy(compiled("gqa") / "model.onnx", tmp_path / "lonely.onnx")
    result = _run(tmp_path / "lonely.onnx")
    assert result.exit_code == 1 and "a paged model without manifest.json beside it" in result.stderr
    result = _run(tmp_path)
    assert result.exit_code == 1 and "no manifest here" in result.stderr


def test_a_model_without_kv_cache_and_nothing_to_time(tmp_path, dense_model):
    model = build_decoder(DecoderConfig(), "gqa")
    kv = {i.name for i in model.graph.input if "past" in i.name}
    model.graph.ClearField("node")
    model.graph.node.add(op_type="Identity", input=["input_ids"], output=["logits"])
    keep = [i for i in model.graph.input if i.name not in kv]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    onnx.save(model, str(tmp_path / "no_kv.onnx"))
    result = _run(tmp_path / "no_kv.onnx")
    assert result.exit_code == 1 and "no attention layer with a dense KV cache" in result.stderr
    result = _run(dense_model("gqa"), "--prefill-len", "0", "--decode-steps", "0")
    assert result.exit_code == 1 and "nothing to time" in result.stderr


def test_errors_are_pagedc_errors(dense_model):
    with pytest.raises(RequestError):
        detect(dense_model("gqa").parent / "missing.onnx")


@pytest.mark.parametrize("arch,exporter", [("qwen2", "genai"), ("gpt2", "optimum")])
def test_real_exports_paged_and_dense(exported_model_factory, tmp_path, arch, exporter):
    """genai (GroupQueryAttention, no position_ids input) and Optimum GPT-2 (learned positions)."""
    dense = exported_model_factory(arch, exporter)
    compile_model(dense, tmp_path / "paged", CompileOptions(block_size=8, num_blocks=64), progress=lambda _: None)
    result = _run(tmp_path / "paged", dense, *FAST, "--json")
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    assert [m["kind"] for m in models] == [PAGED_SEPARATE, STANDARD]
    assert all(m["decode"]["num_steps"] == 6 for m in models)


def test_an_unknown_backend_is_refused(compiled, tmp_path):
    manifest = Manifest.read(compiled("gqa"))
    dataclasses.replace(manifest, backend="tensorrt").write(tmp_path)
    with pytest.raises(ManifestError, match="field 'backend' must be one of onnxruntime, migraphx, got 'tensorrt'"):
        detect(tmp_path)
