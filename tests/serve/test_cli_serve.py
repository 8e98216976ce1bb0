"""`pagedc serve` refusals that happen before any server starts: exit code and message."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from pagedc.cli import main


def test_help_shows_examples():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "pagedc serve model.paged --port 8080 --api-key" in result.output


def test_a_model_without_tokenizer_json_is_refused_with_what_to_do(served_model, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(served_model, bare)
    (bare / "tokenizer.json").unlink()
    result = CliRunner().invoke(main, ["serve", str(bare), "--port", "0"])
    assert result.exit_code == 1
    assert "no tokenizer.json" in result.output and "recompile" in result.output


def test_a_directory_without_a_manifest_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert result.exit_code == 1 and "no manifest here" in result.output


def test_a_missing_directory_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
