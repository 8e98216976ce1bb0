"""`pagedc generate`: streams tokens; exit codes for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pagedc.cli import main
from tests.paged_harness import DenseRunner


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, dense_model):
    out = tmp_path_factory.mktemp("gen") / "model.paged"
    result = CliRunner().invoke(main, ["compile", str(dense_model("decomposed")), "-o", str(out), "--target", "onnx",
                                       "--num-blocks", "64", "--block-size", "4"])
    assert result.exit_code == 0, result.output
    return out


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_one_prompt_streams_greedy_tokens_on_one_line(out_dir, dense_model):
    result = _run("generate", out_dir, "--prompt-ids", "5,6,7", "--max-new-tokens", "16")
    assert result.exit_code == 0, result.output
    assert [int(t) for t in result.stdout.split()] == DenseRunner(dense_model("decomposed")).greedy([5, 6, 7], 16)


def test_several_prompts_stream_index_token_lines(out_dir):
    result = _run("generate", out_dir / "manifest.json", "--prompt-ids", "5,6,7", "--prompt-ids", "9", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 6 and sorted(line.split(":")[0] for line in lines) == ["0"] * 3 + ["1"] * 3


def test_stats_go_to_stderr_as_json(out_dir):
    result = _run("generate", out_dir, "--prompt-ids", "1,2", "--max-new-tokens", "4", "--stats")
    figures = json.loads(result.stderr.strip().splitlines()[-1])
    assert figures["steps"] == 4 and figures["blocks_used"] == 0


@pytest.mark.parametrize("args,code,message", [
    ([], 2, "give at least one --prompt-ids or --prompt"),
    (["--prompt-ids", "1,x"], 2, "is not a comma-separated list of token ids"),
    (["--prompt-ids", "1,500"], 1, "outside the vocabulary [0, 97): [500]"),
    (["--prompt", "hello"], 2, "no tokenizer.json in"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], 2, "0 is not in the range x>=1"),
])
def test_bad_input_exit_codes(out_dir, args, code, message):
    result = _run("generate", out_dir, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr


def test_a_directory_without_manifest_is_a_clear_error(tmp_path):
    result = _run("generate", tmp_path, "--prompt-ids", "1")
    assert result.exit_code == 1 and "no manifest here" in result.stderr


def test_prompt_text_uses_the_tokenizer_copied_by_compile(tmp_path, dense_model):
    tokenizers = pytest.importorskip("tokenizers", reason="the `tokenizers` package is in the test extra")
    import shutil

    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    shutil.copy(dense_model("gqa"), source)
    words = ["[UNK]", "once", "upon", "a", "time"] + [f"w{i}" for i in range(5, 97)]   # every model id decodes
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(source.parent / "tokenizer.json"))
    out = tmp_path / "out"
    assert _run("compile", source, "-o", out, "--target", "onnx", "--num-blocks", "32").exit_code == 0
    assert (out / "tokenizer.json").exists()
    by_text = _run("generate", out, "--prompt", "once upon a time", "--max-new-tokens", "5")
    by_ids = _run("generate", out, "--prompt-ids", "1,2,3,4", "--max-new-tokens", "5", "--stats")
    assert by_text.exit_code == 0, by_text.output
    ids = [int(t) for t in by_ids.stdout.split()]
    assert len(ids) == 5
    assert by_text.stdout.strip() == "".join(words[t] for t in ids)
