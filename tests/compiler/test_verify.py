"""`pagedc verify`: passes on correct rewrites, fails on a planted bug, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pagedc.cli import main
from pagedc.build import CompileOptions, compile_model
from pagedc.runtime import step_feeds
from tests.conftest import EXPORTS
from tests.exporters.fixtures import BATCH_ONE


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, dense_model):
    def build(form: str, layout: str = "separate", logits: str = "all"):
        out = tmp_path_factory.mktemp("verify") / "paged"
        compile_model(dense_model(form), out, CompileOptions(block_size=4, layout=layout, num_blocks=64, logits=logits))
        return out, dense_model(form)
    return build


@pytest.mark.parametrize("logits", ["all", "last"])
@pytest.mark.parametrize("layout", ["separate", "combined"])
@pytest.mark.parametrize("form", ["decomposed", "gqa", "attention", "mha"])
def test_verify_passes_at_the_tight_tier(compiled, form, layout, logits):
    paged, dense = compiled(form, layout, logits)
    result = _run("verify", paged, dense, "--batch", "3", "--decode-steps", "6", "--tier", "tight")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 + 7 and lines[-1] == "PASS at tier tight; greedy tokens agree 21/21"
    assert lines[1] == "compared per step: " + ("logits of every new token" if logits == "all" else
                                                "logits of each sequence's last new token (the paged model "
                                                "computes only those: --logits last)")


@pytest.mark.parametrize("logits,values", [("all", (16 + 12) * 97), ("last", 2 * 97)])
def test_verify_json_report(compiled, logits, values):
    paged, dense = compiled("gqa", logits=logits)
    result = _run("verify", paged / "manifest.json", dense, "--json", "--decode-steps", "2")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["prompt_lens"] == [16, 12] and report["logits"] == logits
    assert [s["step"] for s in report["steps"]] == [0, 1, 2]
    assert set(report["steps"][0]["mismatches"]) == {"tight", "medium", "loose"}
    assert report["steps"][0]["num_values"] == values and report["steps"][1]["num_values"] == 2 * 97


def test_verify_catches_two_swapped_blocks(compiled, monkeypatch):
    """A planted bug: the block table lists a sequence's first two blocks in the wrong order."""
    paged, dense = compiled("decomposed")
    import pagedc.verify.run as verify_run

    def swapped(steps, *args, **kw):
        feeds = step_feeds(steps, *args, **kw)
        feeds["block_table"][0, [0, 1]] = feeds["block_table"][0, [1, 0]]
        return feeds

    monkeypatch.setattr(verify_run, "step_feeds", swapped)
    result = _run("verify", paged, dense, "--decode-steps", "3")
    assert result.exit_code == 1
    assert result.stdout.strip().splitlines()[-1].startswith("FAIL at tier medium")


@pytest.mark.parametrize("arch,exporter", EXPORTS)
def test_verify_passes_on_real_exports(exported_model_factory, tmp_path, arch, exporter):
    dense = exported_model_factory(arch, exporter)
    compile_model(dense, tmp_path / "paged", CompileOptions(block_size=8, num_blocks=64, logits="all"))
    batch = "1" if exporter in BATCH_ONE else "3"   # a batch-1 export verifies one sequence at a time
    result = _run("verify", tmp_path / "paged", dense, "--batch", batch, "--decode-steps", "8")
    assert result.exit_code == 0, result.output
    assert "PASS at tier medium" in result.stdout


def test_paged_side_without_manifest_is_a_clear_error(tmp_path, dense_model):
    result = _run("verify", tmp_path, dense_model("gqa"))
    assert result.exit_code == 1 and "no manifest.json in" in result.stderr


def test_standard_side_must_be_a_dense_model(compiled, tmp_path):
    paged, _ = compiled("gqa")
    result = _run("verify", paged, paged / "model.onnx")
    assert result.exit_code == 1
    assert "no attention layer with a dense KV cache; is this the standard (dense) model?" in result.stderr


def test_seeded_prompts_are_ragged_and_reproducible():
    from pagedc.verify.run import seeded_prompts

    first = seeded_prompts(4, 16, 97, seed=1)
    assert [len(p) for p in first] == [16, 14, 12, 10] and first == seeded_prompts(4, 16, 97, seed=1)
    assert max(max(p) for p in first) < 97 and first != seeded_prompts(4, 16, 97, seed=2)
    assert np.all([len(p) >= 1 for p in seeded_prompts(8, 3, 97, seed=0)])


@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_fp16_models_verify_at_the_loose_tier(tmp_path, dense_model, form):
    dense = dense_model(form, dtype="float16")
    compile_model(dense, tmp_path / "paged", CompileOptions(block_size=4, num_blocks=64, logits="all"))
    result = _run("verify", tmp_path / "paged", dense, "--tier", "loose", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["passed"], result.output
    assert all(s["greedy_agree"] == s["num_sequences"] for s in report["steps"])


def test_static_standard_artifacts_give_the_dense_logits(dense_model, tmp_path):
    """The --emit-standard side of verify (static KV buffers), run by ONNX Runtime over the lowered graphs."""
    from pagedc.mxr.lowering import Bucket
    from pagedc.verify.run import _run_standard, standard_stepper, static_standard_stepper
    from tests.compiler.mxr_harness import standard_manifest

    for form in ("decomposed", "gqa"):
        dense = dense_model(form)
        out = tmp_path / form
        out.mkdir()
        manifest, runners = standard_manifest(dense, out, [Bucket("prefill", 1, 16), Bucket("decode", 1, 1)], 32)
        prompts = [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
        static, static_tokens = _run_standard(static_standard_stepper(manifest, runners), prompts, 4)
        dense_logits, dense_tokens = _run_standard(standard_stepper(dense), prompts, 4)
        assert static_tokens == dense_tokens
        for got, want in zip(static, dense_logits):
            assert all(np.max(np.abs(g - w)) <= 1e-4 for g, w in zip(got, want)), form


def test_standard_side_without_standard_artifacts_says_to_emit_them(compiled):
    paged, _ = compiled("gqa")
    result = _run("verify", paged, paged)
    assert result.exit_code == 1 and "no standard artifacts; compile with --emit-standard" in result.stderr


def test_migraphx_manifest_without_migraphx_names_what_to_install(compiled, tmp_path):
    import shutil

    try:
        import migraphx  # noqa: F401
        pytest.skip("MIGraphX is installed here; this test checks the message when it is not")
    except ImportError:
        pass
    paged, dense = compiled("gqa")
    copy = tmp_path / "mxr"
    shutil.copytree(paged, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["backend"] = "migraphx"
    (copy / "manifest.json").write_text(json.dumps(data))
    result = _run("verify", copy, dense)
    assert result.exit_code == 1
    assert "MIGraphX's Python module is not importable" in result.stderr and "/opt/rocm/lib" in result.stderr
