"""Bad input through the CLI: every case ends with exit 1 or 2 (130 for Ctrl-C), one clear message, no traceback,
and nothing lost or half-written. The Python API cases are in tests/runtime/test_bad_input_api.py.

How each case ends now (exit code: first line of the message; `...` = paths):

| case | exit: message |
|---|---|
| compile src/decoder.onnx -o src --force | 1: Error: src would replace the source model src/decoder.onnx: the output must not be or contain ... (source kept) |
| compile -o . --force (cwd holds src/) | 1: Error: . would replace the source model ... |
| compile -o src/decoder.onnx --force | 1: Error: ... would replace the source model ... |
| compile -o src/decoder.onnx.data --force | 1: Error: src/decoder.onnx.data would replace the source model's weights ... |
| compile -o DIR --force, DIR holds the source's external weights | 1: Error: DIR would replace the source model's weights ... |
| compile -o DIR --force, DIR not a compile output | 1: Error: DIR is not a `pagedc compile` output (no manifest.json) and is not empty; --force replaces compile outputs only ... |
| compile --kv-memory 1024GiB / 1TiB / 1TB | 1: Error: --kv-memory 1.0 TiB: the KV pools would take 1.0 TiB, this machine has N GiB of memory in all, which holds at most N blocks ... |
| compile --num-blocks 99999999999999 | 1: Error: --num-blocks ...: the KV pools would take ..., this machine has ... |
| compile --kv-memory 1PiB | 2: Error: Invalid value for '--kv-memory': '1PiB' is not a size; write e.g. 2GiB, 512MiB, 1TiB or 1000000 |
| compile, source's external data missing | 1: Error: ...: its weights live in .../decoder.onnx.data, which is missing; put the exporter's ... |
| compile, source's external data truncated | 1: Error: ...: its weights file ... is truncated (N bytes, the model's tensors need N) ... |
| compile a text file named .onnx | 1: Error: ...: not a readable ONNX model (DecodeError: ...) |
| compile -o missing/parent/out | 1: Error: missing/parent: output's parent directory does not exist ... |
| compile into a read-only directory (chmod 555, non-root) | 1: Error: ... is not writable; choose another -o |
| compile -o /sys/out (read-only filesystem, root) | 1: Error: /sys: cannot create the output there (Operation not permitted); choose another -o |
| Ctrl-C (SIGINT) while importing / while compiling | 130, no traceback, no *.tmp-* left |
| generate DIR --max-new-tokens 8000 (256 positions) | 0: 253 tokens, stderr: pagedc: prompt 0 stopped after 253 new tokens (finish reason length) ... |
| generate DIR with a 300-token prompt (256 positions) | 1: Error: prompt 0 has 300 tokens, more than the 256 this engine runs per sequence: the model embeds positions 0..255 ... |
| generate DIR --seed -1 | 1: Error: seed must be an int >= 0, got -1 |
| generate model.onnx (not a compile output) | 1: Error: ... is a model file, not a `pagedc compile` output; compile it first ... |
| generate DIR, model.onnx missing | 1: Error: .../model.onnx: the manifest lists this artifact but the file is missing; recompile the directory |
| generate DIR, model.onnx truncated | 1: Error: .../model.onnx: ONNX Runtime cannot load it ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF ...) |
| generate DIR, model.onnx.data missing | 1: Error: .../model.onnx: ONNX Runtime cannot load it (... External data path does not exist ...) |
| generate DIR, model.onnx.data truncated | 1: Error: .../model.onnx: ONNX Runtime cannot load it (... out of bounds or can not be read in full.) |
| generate DIR, manifest.json a JSON list | 1: Error: ...: field '(top level)' must be a JSON object, got [...] ... |
| generate DIR, manifest.json not JSON / not UTF-8 | 1: Error: ...: not valid JSON (...) |
| generate DIR, manifest field missing / unknown | 1: Error: ...: field 'head_dim' is missing ... / unknown field(s) ['colour'] ... |
| generate DIR, block_size "4" / num_blocks -5 | 1: Error: ...: field 'block_size' must be an int >= 1, got '4' ... / 'num_blocks' must be an int >= 2, got -5 |
| generate DIR, num_heads 3 (not a multiple of num_kv_heads) | 1: Error: ...: field 'num_heads' must be a multiple of num_kv_heads (2), got 3 |
| generate DIR, num_layers 3 | 1: Error: ...: field 'pools' must be a list of num_layers (3) entries ... |
| generate DIR, layout combined | 1: Error: ...: field 'pools[0].inputs' must be 1 pool name(s) for the combined layout ... |
| generate DIR, kv_dtype float16 | 1: Error: ...: field 'artifacts[0].dtypes.key_cache.0' must be kv_dtype (float16), got 'float32' |
| generate DIR, backend tensorrt / format_version 2 | 1: Error: ...: field 'backend' must be one of onnxruntime, migraphx ... / format_version 2 is not supported ... |
| generate DIR, num_kv_heads / head_dim / block_size edited | 1: Error: .../model.onnx does not match manifest.json (N problem(s)): (pool dims named) |
| generate DIR, vocab_size edited | 1: Error: .../model.onnx does not match manifest.json ... output 'logits' has 97 columns ... |
| generate DIR, logits "all" edited in (a --logits last compile) | 1: Error: .../model.onnx does not match manifest.json ... output 'logits' is [...] (each row's last new token) ... |
| generate DIR, logits "first" | 1: Error: ...: field 'logits' must be one of last, all, got 'first' ... |
| generate DIR, artifact path ../../etc/passwd or /etc/passwd | 1: Error: ...: field 'artifacts[0].path' must be a relative path inside the directory ... |
| generate DIR, artifact path a symlink out of DIR | 1: Error: ...: field 'artifacts[0].path' must be a path that stays inside the directory ... |
| generate DIR, num_blocks edited past the machine's memory | 1: Error: DIR: the KV pools need N GiB, this machine has N GiB available (of N GiB): about N blocks fit ... |
| verify DIR other.onnx (another vocabulary) | 1: Error: other.onnx has a vocabulary of 50 tokens, the paged model 97: it is not the model ... |
| verify DIR other.onnx (same shapes, other weights) | 1: FAIL ..., then: note: the manifest's source hash does not match other.onnx ... |
| verify model.onnx model.onnx (paged side not compiled) | 1: Error: ...: no manifest.json in ...; verify needs the paged side as a `pagedc compile` output ... |
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from pagedc.cli import main
from pagedc.testing import DecoderConfig, build_decoder


def _run(*args, cwd: Path | None = None):
    if cwd is None:
        return CliRunner().invoke(main, [str(a) for a in args])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def _fails(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert any(line.startswith("Error:") for line in result.stderr.splitlines()), result.stderr


@pytest.fixture
def source(tmp_path):
    """src/decoder.onnx with its weights in src/decoder.onnx.data (as exporters write large models)."""
    path = tmp_path / "src" / "decoder.onnx"
    path.parent.mkdir()
    onnx.save(build_decoder(DecoderConfig(), "decomposed"), str(path), save_as_external_data=True,
              location="decoder.onnx.data", size_threshold=0)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, dense_model):
    """A good compile output (256 positions, 80 blocks of 4); tests damage copies of it."""
    out = tmp_path_factory.mktemp("good") / "model.paged"
    result = _run("compile", dense_model("decomposed"), "-o", out, "--target", "onnx", "--num-blocks", "80",
                  "--block-size", "4")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copy(compiled, tmp_path):
    target = tmp_path / "model.paged"
    shutil.copytree(compiled, target)
    return target


def _left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- compile: never destroys data ---------------------------------------------------------------
NOT_THE_SOURCE = "the output must not be or contain the source model, its directory or its weights (--force or not)"


@pytest.mark.parametrize("out", ["src", ".", "src/decoder.onnx", "src/decoder.onnx.data"])
def test_compile_never_replaces_the_source(source, out):
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    result = _run("compile", "src/decoder.onnx", "-o", out, "--force", "--target", "onnx", cwd=source.parent.parent)
    _fails(result, 1, NOT_THE_SOURCE)
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before
    assert _left(source.parent.parent) == ["src"]


def test_force_replaces_compile_outputs_only(source, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _fails(_run("compile", source, "-o", mine, "--force", "--target", "onnx"), 1,
           "is not a `pagedc compile` output (no manifest.json) and is not empty")
    assert (mine / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("args", [["--kv-memory", "1024GiB"], ["--kv-memory", "1TiB"], ["--kv-memory", "1TB"],
                                  ["--num-blocks", "99999999999999"]])
def test_pools_larger_than_the_machine_are_refused(source, tmp_path, args):
    result = _run("compile", source, "-o", tmp_path / "out", "--target", "onnx", *args)
    _fails(result, 1, "of memory in all, which holds at most")
    assert "the KV pools would take" in result.stderr and not (tmp_path / "out").exists()


def test_unknown_size_units_are_a_usage_error(source, tmp_path):
    _fails(_run("compile", source, "-o", tmp_path / "out", "--kv-memory", "1PiB"), 2, "'1PiB' is not a size")


@pytest.mark.parametrize("damage,message", [("missing", "which is missing"), ("truncated", "is truncated")])
def test_source_weights_missing_or_truncated(source, tmp_path, damage, message):
    data = source.with_name("decoder.onnx.data")
    if damage == "missing":
        data.unlink()
    else:
        os.truncate(data, data.stat().st_size // 2)
    _fails(_run("compile", source, "-o", tmp_path / "out", "--target", "onnx"), 1, message)
    assert _left(tmp_path) == ["src"]


def test_a_file_that_is_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("hello, I am text\n" * 10)
    _fails(_run("compile", fake, "-o", tmp_path / "out"), 1, "not a readable ONNX model")


def test_missing_output_parent(source, tmp_path):
    _fails(_run("compile", source, "-o", tmp_path / "no" / "such" / "out"), 1, "output's parent directory does not exist")


@pytest.mark.parametrize("where", ["chmod", "sysfs"])
def test_read_only_output_directory(source, tmp_path, where):
    """A parent the user cannot write (chmod 555; root ignores that, so /sys, a read-only filesystem, for root)."""
    if where == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions; the sysfs case covers root")
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o555)
    else:
        parent = Path("/sys")
        if not parent.is_dir():
            pytest.skip("no /sys here")
    result = _run("compile", source, "-o", parent / "pagedc-out", "--target", "onnx")
    _fails(result, 1, "choose another -o")
    assert "is not writable" in result.stderr or "cannot create the output there" in result.stderr
    assert not (parent / "pagedc-out").exists() and not list(parent.glob("pagedc-out.tmp-*"))


def test_output_holding_the_sources_weights_is_refused(tmp_path):
    source = tmp_path / "src" / "decoder.onnx"
    (tmp_path / "src" / "weights").mkdir(parents=True)
    onnx.save(build_decoder(DecoderConfig(), "decomposed"), str(source), save_as_external_data=True,
              location="weights/decoder.data", size_threshold=0)
    result = _run("compile", source, "-o", tmp_path / "src" / "weights", "--force", "--target", "onnx")
    _fails(result, 1, "would replace the source model's weights")
    assert (tmp_path / "src" / "weights" / "decoder.data").is_file()


def test_ctrl_c_while_importing_exits_130_quietly():
    """A KeyboardInterrupt raised inside an import the CLI makes (as SIGINT during startup does)."""
    code = ("import builtins, sys\nreal = builtins.__import__\n"
            "def interrupted(name, *args, **kwargs):\n"
            "    if name == 'onnxruntime':\n        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupted\nsys.argv = ['pagedc', '--help']\n"
            "from pagedc.entry import run\nrun()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 130 and "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("flags,trigger", [(["-X", "importtime"], "onnx"), ([], "pagedc: rewriting")],
                         ids=["while-importing", "while-compiling"])
def test_sigint_exits_130_and_leaves_nothing(source, tmp_path, flags, trigger):
    """A real SIGINT once stderr shows `trigger`: an import of onnx (-X importtime lists imports as they
    happen), or the compile's progress line."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, *flags, "-m", "pagedc", "compile", str(source), "-o", str(out),
                                "--target", "onnx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if trigger in line:
            process.send_signal(signal.SIGINT)
            break
    stderr = "".join(seen) + process.communicate(timeout=60)[1]
    assert process.returncode in (130, 0), stderr          # 0: it finished before the signal landed
    assert "Traceback" not in stderr
    assert _left(tmp_path) == (["out", "src"] if process.returncode == 0 else ["src"])


# -- generate: the model's limits and damaged directories ---------------------------------------
def test_generation_stops_at_the_models_positions(compiled):
    result = _run("generate", compiled, "--prompt-ids", "1,2,3", "--max-new-tokens", "8000")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 253                       # 3 + 253 = 256 positions
    assert "prompt 0 stopped after 253 new tokens (finish reason length): sequences end at 256 tokens" in result.stderr
    assert json.loads((compiled / "manifest.json").read_text())["max_position"] == 256


def test_a_prompt_longer_than_the_positions_is_refused(compiled):
    result = _run("generate", compiled, "--prompt-ids", ",".join(["1"] * 300))
    _fails(result, 1, "prompt 0 has 300 tokens, more than the 256 this engine runs per sequence: "
                      "the model embeds positions 0..255")


def test_negative_seed(compiled):
    _fails(_run("generate", compiled, "--prompt-ids", "1", "--seed", "-1"), 1, "seed must be an int >= 0, got -1")


def test_generate_given_an_onnx_file(dense_model):
    _fails(_run("generate", dense_model("decomposed"), "--prompt-ids", "1"), 1,
           "is a model file, not a `pagedc compile` output; compile it first")


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 3)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "model.onnx").unlink(), "the manifest lists this artifact but the file is missing"),
    (lambda d: _truncate(d / "model.onnx"), "ONNX Runtime cannot load it"),
    (lambda d: (d / "model.onnx.data").unlink(), "ONNX Runtime cannot load it"),
    (lambda d: _truncate(d / "model.onnx.data"), "ONNX Runtime cannot load it"),
    (lambda d: (d / "manifest.json").write_text("[1, 2]"), "field '(top level)' must be a JSON object"),
    (lambda d: (d / "manifest.json").write_text("{oops"), "not valid JSON"),
    (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00binary"), "not valid JSON"),
], ids=["model-missing", "model-truncated", "data-missing", "data-truncated", "manifest-list", "manifest-not-json",
        "manifest-binary"])
def test_damaged_compile_outputs(copy, damage, message):
    damage(copy)
    _fails(_run("generate", copy, "--prompt-ids", "1,2"), 1, message)


def _edit(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        elif key == "artifact_path":
            data["artifacts"][0]["path"] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("changes,message", [
    ({"block_size": "4"}, "field 'block_size' must be an int >= 1, got '4'"),
    ({"num_blocks": -5}, "field 'num_blocks' must be an int >= 2, got -5"),
    ({"head_dim": None}, "field 'head_dim' is missing"),
    ({"colour": "blue"}, "unknown field(s) ['colour']"),
    ({"num_heads": 3}, "field 'num_heads' must be a multiple of num_kv_heads (2), got 3"),
    ({"num_layers": 3}, "field 'pools' must be a list of num_layers (3) entries"),
    ({"layout": "combined"}, "field 'pools[0].inputs' must be 1 pool name(s) for the combined layout"),
    ({"kv_dtype": "float16"}, "field 'artifacts[0].dtypes.key_cache.0' must be kv_dtype (float16), got 'float32'"),
    ({"backend": "tensorrt"}, "field 'backend' must be one of onnxruntime, migraphx"),
    ({"format_version": 2}, "format_version 2 is not supported"),
    ({"num_kv_heads": 1}, "pool input 'key_cache.0' has dims [?, 2, 4, 16], the manifest's pool shape is [80, 1, 4, 16]"),
    ({"head_dim": 32}, "pool input 'key_cache.0' has dims [?, 2, 4, 16], the manifest's pool shape is [80, 2, 4, 32]"),
    ({"block_size": 8}, "the manifest's pool shape is [80, 2, 8, 16]"),
    ({"vocab_size": 50}, "output 'logits' has 97 columns, the manifest's vocab_size is 50"),
    ({"logits": "all"}, "output 'logits' is ['batch_size', 1, 97] (each row's last new token), the manifest's "
                        "logits is 'all' ([B, S, V])"),
    ({"logits": "first"}, "field 'logits' must be one of last, all, got 'first'"),
    ({"artifact_path": "../../etc/passwd"}, "field 'artifacts[0].path' must be a relative path inside the directory"),
    ({"artifact_path": "/etc/passwd"}, "field 'artifacts[0].path' must be a relative path inside the directory"),
    ({"num_blocks": 99_999_999}, "this machine has"),
])
def test_edited_manifests(copy, changes, message):
    _edit(copy, **changes)
    _fails(_run("generate", copy, "--prompt-ids", "1,2"), 1, message)


def test_an_artifact_linked_out_of_the_directory(copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "model.onnx", outside)
    (copy / "model.onnx").symlink_to(outside)
    _fails(_run("generate", copy, "--prompt-ids", "1"), 1, "must be a path that stays inside the directory")


# -- verify against the wrong model ---------------------------------------------------------------
def test_verify_against_another_vocabulary(compiled, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(build_decoder(DecoderConfig(vocab_size=50), "decomposed"), str(other))
    _fails(_run("verify", compiled, other), 1, "has a vocabulary of 50 tokens, the paged model 97: it is not the model")


def test_verify_against_other_weights_says_the_hash_differs(compiled, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(build_decoder(DecoderConfig(seed=7), "decomposed"), str(other))
    result = _run("verify", compiled, other, "--decode-steps", "1")
    assert result.exit_code == 1 and "FAIL at tier medium" in result.stdout, result.output
    assert f"note: the manifest's source hash does not match {other}" in result.stdout


def test_verify_needs_a_compiled_paged_side(dense_model):
    _fails(_run("verify", dense_model("decomposed"), dense_model("decomposed")), 1, "no manifest.json in")
