"""The .mxr path on a real MIGraphX (ref target): compile, verify against the standard .mxr and the source,
the standard buckets at batch 2, generate against the ONNX Runtime compile. Skipped where `import migraphx`
fails (CI has no MIGraphX)."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.build import CompileOptions, compile_model
from pagedc.manifest import Manifest
from pagedc.runtime.engine import Engine
from pagedc.runtime.sessions.standard_cache import StandardKVCache
from pagedc.verify.run import standard_programs, verify
from tests.paged_harness import DenseRunner

pytest.importorskip("migraphx", reason="MIGraphX (ROCm's Python module) is not installed; nothing to run")

PROMPTS = [[5, 17, 3, 9, 60], [2, 4, 6, 8, 10, 12, 14, 16]]


def _compile(source, out, **changes):
    options = CompileOptions(**{**dict(target="mxr", device="ref", block_size=4, num_blocks=48, prefill_lens=(8,),
                                       batches=(1, 2), max_context=24, emit_standard=True), **changes})
    return compile_model(source, out, options, progress=lambda _: None)


@pytest.mark.parametrize("form,layout", [("gqa", "separate"), ("decomposed", "combined")])
def test_paged_mxr_verifies_against_its_standard_mxr_and_the_source(dense_model, tmp_path, form, layout):
    source = dense_model(form)
    manifest = _compile(source, tmp_path / "out", layout=layout)
    assert manifest.backend_options["pools"] == "step_blocks" and manifest.logits == "last"
    weights = manifest.backend_options["weights"]
    assert (tmp_path / "out" / weights["file"]).is_file() and "model.embed_tokens.weight" in weights["tensors"]
    for standard in (tmp_path / "out" / "standard_decode_b1.mxr", source):
        report = verify(tmp_path / "out", standard, batch=2, prompt_len=8, decode_steps=4)
        assert report.passed, report.to_dict()


@pytest.mark.parametrize("form", ["gqa", "decomposed"])
def test_standard_mxr_at_batch_2_matches_the_dense_model(dense_model, tmp_path, form):
    source = dense_model(form)
    manifest = _compile(source, tmp_path / "out")
    runners = standard_programs(manifest, tmp_path / "out")
    cache = StandardKVCache(manifest, batch=2)
    got = [[], []]
    for tokens in [PROMPTS, [[11], [21]], [[12], [22]]]:
        artifact, feeds = cache.feeds(tokens)
        assert int(artifact.inputs["input_ids"][0]) == 2
        outputs = dict(zip(artifact.outputs, runners[artifact.path](feeds)))
        cache.update(artifact, outputs)
        for b, row in enumerate(tokens):
            got[b].append(np.array(outputs["logits"][b, : len(row)]))
    for b, (prompt, new) in enumerate(zip(PROMPTS, [[11, 12], [21, 22]])):
        want = DenseRunner(source).run(prompt + new, [len(prompt), 1, 1])
        for step_got, step_want in zip(got[b], want):
            np.testing.assert_allclose(step_got, step_want, atol=1e-4, rtol=0)


def test_generate_on_mxr_gives_the_onnx_runtime_tokens(dense_model, tmp_path):
    source = dense_model("gqa")
    _compile(source, tmp_path / "mxr", emit_standard=False)
    compile_model(source, tmp_path / "ort", CompileOptions(target="onnx", block_size=4, num_blocks=48),
                  progress=lambda _: None)
    tokens = {}
    for name in ("mxr", "ort"):
        engine = Engine(Manifest.read(tmp_path / name), tmp_path / name)
        # the second round finds the prompts' full blocks in the prefix cache
        tokens[name] = [engine.generate(PROMPTS, max_new_tokens=6) for _ in range(2)]
    assert tokens["mxr"] == tokens["ort"] and tokens["mxr"][0] == tokens["mxr"][1]


def test_last_token_logits_on_mxr_give_the_tokens_of_all_positions(dense_model, tmp_path):
    """ArgMax, GatherND(batch_dims=1) and Unsqueeze through MIGraphX's parser and ref target."""
    source = dense_model("decomposed")
    tokens = {}
    for logits in ("last", "all"):
        manifest = _compile(source, tmp_path / logits, emit_standard=False, logits=logits)
        assert manifest.logits == logits
        engine = Engine(manifest, tmp_path / logits)
        tokens[logits] = engine.generate(PROMPTS, max_new_tokens=6)
    assert tokens["last"] == tokens["all"]


def test_forked_samples_on_mxr_copy_on_write_and_match_onnx_runtime(dense_model, tmp_path):
    from pagedc.runtime.sampling import SamplingParams
    source = dense_model("gqa")
    _compile(source, tmp_path / "mxr", emit_standard=False, max_context=32)
    compile_model(source, tmp_path / "ort", CompileOptions(target="onnx", block_size=4, num_blocks=48),
                  progress=lambda _: None)
    # n=2, the largest decode bucket: the scheduler admits a request by count, not by its n samples
    prompt, samples = PROMPTS[1] + [7], {}        # 9 tokens: the last block is partial, so a sample copies it
    for name in ("mxr", "ort"):
        engine = Engine(Manifest.read(tmp_path / name), tmp_path / name)
        first = engine.add_request(prompt, 6, SamplingParams(temperature=1.0, top_k=20, seed=3), n=2)
        while engine.has_unfinished():
            engine.step()
        assert engine.manager.stats()["cow_copies"] == 1
        samples[name] = [engine.requests[first + k].output for k in range(2)]
    assert samples["mxr"] == samples["ort"] and len({tuple(s) for s in samples["mxr"]}) > 1
