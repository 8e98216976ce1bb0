"""`pagedc inspect` and the top-level CLI: exit codes and messages."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pagedc import __version__
from pagedc.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_shows_examples():
    for args in ([], ["-h"], ["inspect", "--help"]):
        result = _run(*args)
        assert result.exit_code in (0, 2) and "Examples:" in result.output, args


def test_version():
    result = _run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_table_lists_every_layer(dense_model):
    result = _run("inspect", dense_model("decomposed"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["layer", "form", "heads", "kv_heads", "head_dim"]
    assert [line.split()[:6] for line in lines[1:]] == [[str(i), "decomposed", "4", "2", "16", "rotate_half"] for i in range(2)]


def test_json_is_machine_readable(dense_model):
    result = _run("inspect", dense_model("gqa"), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["num_layers"] == 2 and data["not_recognised"] == []
    assert data["layers"][1] == {
        "layer": 1, "form": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
        "rotary": "inside GroupQueryAttention (do_rotary=1), positions from seqlens_k", "mask": "causal",
        "past_key": "past_key_values.1.key", "past_value": "past_key_values.1.value",
        "present_key": "present.1.key", "present_value": "present.1.value",
    }


def test_model_without_kv_attention_exits_1_saying_what_it_found(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "classifier.onnx"
    onnx.save(helper.make_model(graph), str(path))
    result = _run("inspect", path)
    assert result.exit_code == 1
    assert "no attention layer with a KV cache found (found 1 Softmax among 1 nodes)" in result.stderr


def test_corrupt_file_exits_1_with_a_clear_message(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf \xff\xfe")
    result = _run("inspect", path)
    assert result.exit_code == 1
    assert "broken.onnx: not" in result.stderr and "ONNX model" in result.stderr
    assert "Traceback" not in result.output


def test_missing_path_is_a_usage_error(tmp_path):
    result = _run("inspect", tmp_path / "nope.onnx")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
