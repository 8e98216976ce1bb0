"""`pagedc compile`: outputs, manifest, atomicity, external weights."""

from __future__ import annotations

import json

import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from pagedc.cli import main
from pagedc.manifest import FILENAME, Manifest, ManifestError
from pagedc.model_file import load_model
from pagedc.passes.paged import rewrite_to_paged
from pagedc.testing.build import build_decoder
from pagedc.testing.config import DecoderConfig


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _external_copy(tmp_path, form="decomposed", **config):
    """A reference decoder saved with its weights in a separate .data file, as large exports are."""
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    onnx.save(build_decoder(DecoderConfig(**config), form), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=256)
    return path


def test_compile_writes_model_weights_and_manifest(tmp_path):
    source = _external_copy(tmp_path)
    out = tmp_path / "out"
    result = _run("compile", source, "-o", out, "--target", "onnx", "--block-size", "8", "--num-blocks", "64",
                  "--layout", "combined")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "rewrote 2 layer(s): 2 decomposed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [FILENAME, "model.onnx", "model.onnx.data"]
    manifest = Manifest.read(out)
    assert (manifest.num_layers, manifest.num_heads, manifest.num_kv_heads, manifest.head_dim) == (2, 4, 2, 16)
    assert (manifest.block_size, manifest.num_blocks, manifest.layout, manifest.kv_dtype) == (8, 64, "combined", "float32")
    assert manifest.pools[1].inputs == ("kv_cache.1",) and manifest.pools[1].outputs == ("kv_cache_out.1",)
    assert manifest.artifacts[0].inputs["block_table"] == ["batch_size", 2, "max_blocks"]
    assert manifest.artifacts[0].dtypes["slot_mapping"] == "int32"
    assert manifest.vocab_size == 97
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_kv_memory_sets_num_blocks(tmp_path, dense_model):
    out = tmp_path / "out"
    result = _run("compile", dense_model("gqa"), "-o", out, "--target", "onnx", "--block-size", "16",
                  "--kv-memory", "1MiB")
    assert result.exit_code == 0, result.output
    # 2 layers x (K + V) x 2 heads x 16 tokens x 16 dims x 4 bytes = 8 KiB per block
    assert Manifest.read(out).num_blocks == 2**20 // 8192


def test_rewrite_leaves_external_weights_unloaded(tmp_path):
    model = load_model(_external_copy(tmp_path))
    rewrite_to_paged(model)
    external = [v.const_value for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert len(external) > 10
    assert all(t._array is None for t in external), "the pass read weight data"


def test_failed_compile_leaves_nothing_behind(tmp_path, bias_mask_model):
    out = tmp_path / "out"
    result = _run("compile", bias_mask_model, "-o", out, "--target", "onnx")
    assert result.exit_code == 1
    assert "layer 0 (gqa, past_key_values.0.key): mask is \"other: attention_bias input" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_and_force_replaces_only_compile_outputs(tmp_path, dense_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run("compile", dense_model("decomposed"), "-o", out)
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    result = _run("compile", dense_model("decomposed"), "-o", out, "--target", "onnx", "--force", "--num-blocks", "8")
    assert result.exit_code == 1 and "is not a `pagedc compile` output (no manifest.json) and is not empty" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    compiled = tmp_path / "compiled"
    for num_blocks in ("8", "9"):
        result = _run("compile", dense_model("decomposed"), "-o", compiled, "--target", "onnx", "--force",
                      "--num-blocks", num_blocks)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compiled", "out"]
    assert Manifest.read(compiled).num_blocks == 9


@pytest.mark.parametrize("args,message", [
    (["--kv-memory", "lots"], "is not a size"),
    (["--block-size", "0"], "0 is not in the range x>=1"),
    (["--layout", "interleaved"], "'interleaved' is not one of"),
    (["--logits", "first"], "Invalid value for '--logits': 'first' is not one of 'last', 'all'"),
])
def test_bad_options_are_usage_errors(dense_model, tmp_path, args, message):
    result = _run("compile", dense_model("decomposed"), "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("args,logits,rows", [([], "last", 1), (["--logits", "all"], "all", "sequence_length")])
def test_logits_option_sets_the_output_and_the_manifest(tmp_path, dense_model, args, logits, rows):
    out = tmp_path / "out"
    result = _run("compile", dense_model("gqa"), "-o", out, "--target", "onnx", *args)
    assert result.exit_code == 0, result.output
    said = {"last": "logits: each row's last new token only, [B, 1, V]",
            "all": "logits: every new token, [B, S, V] (--logits all)"}
    assert said[logits] in result.stderr
    manifest = Manifest.read(out)
    assert manifest.logits == logits and manifest.abi["logits"].startswith("[batch, 1, vocab]" if rows == 1 else
                                                                        "[batch, seq, vocab]")
    shape = onnx.load(str(out / "model.onnx"), load_external_data=False).graph.output[0].type.tensor_type.shape
    assert [d.dim_value or d.dim_param for d in shape.dim] == ["batch_size", rows, 97]


def test_an_lm_head_not_found_keeps_every_token_and_says_why(tmp_path, dense_model):
    model = onnx.load(str(dense_model("decomposed")))
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "raw_logits"
    model.graph.node.append(onnx.helper.make_node("LogSoftmax", ["raw_logits"], ["logits"], name="log_probs"))
    source = tmp_path / "log_probs.onnx"
    onnx.save(model, str(source))
    result = _run("compile", source, "-o", tmp_path / "out", "--target", "onnx")
    assert result.exit_code == 0, result.output
    assert ("logits stay per token, [B, S, V]: the lm_head was not found with certainty (LogSoftmax 'log_probs' "
            "between the lm_head and 'logits' is not an op") in result.stderr
    assert Manifest.read(tmp_path / "out").logits == "all"


def test_a_manifest_without_logits_reads_as_all(tmp_path, dense_model):
    """Directories compiled before --logits hold every token's logits; their manifests have no such field."""
    out = tmp_path / "out"
    assert _run("compile", dense_model("decomposed"), "-o", out, "--target", "onnx", "--logits", "all").exit_code == 0
    data = json.loads((out / FILENAME).read_text())
    del data["logits"]
    (out / FILENAME).write_text(json.dumps(data))
    assert Manifest.read(out).logits == "all"
    data["logits"] = "first"
    (out / FILENAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="field 'logits' must be one of last, all, got 'first'"):
        Manifest.read(out)


def test_manifest_of_unknown_version_is_refused(tmp_path, dense_model):
    out = tmp_path / "out"
    assert _run("compile", dense_model("decomposed"), "-o", out, "--target", "onnx").exit_code == 0
    data = json.loads((out / FILENAME).read_text())
    data["format_version"] = 99
    (out / FILENAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="format_version 99 is not supported"):
        Manifest.read(out)
