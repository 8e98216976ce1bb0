"""Tier 3: real exports (genai, Optimum, dynamo; Llama, Qwen2) lower to graphs MIGraphX's parser takes, and stay exact.

The lowered static paged buckets run under ONNX Runtime (tests/compiler/mxr_harness.py) against the dense
export; the dense export itself lowers for --emit-standard. Skips when the exports cannot be built here.
"""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.model_file import load_model
from pagedc.mxr.check import check_for_migraphx
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.mxr.standard import lower_standard, standard_sites
from pagedc.passes.paged import rewrite_to_paged
from pagedc.runtime.feeds import SequenceStep, step_feeds
from pagedc.runtime.sessions.standard_cache import StandardKVCache
from tests.compiler.mxr_harness import standard_manifest, static_paged_session
from tests.conftest import BATCHED_EXPORTS, EXPORTS, PAGED_ATOL
from tests.paged_harness import DenseRunner, blocks_for, shuffled_blocks

BLOCK_SIZE, NUM_BLOCKS, MAX_CONTEXT, VOCAB = 4, 48, 32, 1000
BUCKETS = [Bucket("prefill", 4, 12), Bucket("decode", 4, 1)]
# Known gaps of the MIGraphX *standard* (dense, --emit-standard) lowering on transformers' OnnxExporter
# exports, not solved yet; the paged lowering of the same exports is checked.
STANDARD_GAPS = {
    ("qwen3", "transformers-b1"): "lower_standard leaves a run-time Expand shape (node_Expand_653)",
    **{(a, e): "StandardKVCache does not feed the _sliding_window_tensor inputs" for a, e in EXPORTS if a == "mistral"},
    **{(a, e): "the lowered standard model expects a 32-token past where StandardKVCache feeds 44"
       for a, e in EXPORTS if e == "transformers-b1" and a != "qwen3"},
}


@pytest.mark.parametrize("arch,exporter", EXPORTS)
def test_lowered_exports_pass_the_check(exported_model_factory, arch, exporter):
    path = exported_model_factory(arch, exporter)
    paged, report = rewrite_to_paged(load_model(path), block_size=BLOCK_SIZE, last_logits=True)   # compile's default
    assert report.logits == "last"
    for bucket in BUCKETS:
        assert check_for_migraphx(lower_paged(paged, bucket, max_blocks=8, num_blocks=NUM_BLOCKS)) == []
    if (arch, exporter) in STANDARD_GAPS:
        return  # the paged half above is what this export is checked for (STANDARD_GAPS says why)
    dense = load_model(path)
    sites = standard_sites(dense)
    for bucket in BUCKETS:
        assert check_for_migraphx(lower_standard(dense, sites, bucket, MAX_CONTEXT)[0]) == []


# Batch-1 exports are left out: the buckets here batch 4 sequences.
@pytest.mark.parametrize("arch,exporter", BATCHED_EXPORTS)
def test_static_paged_exports_match_the_dense_export(exported_model_factory, tmp_path, arch, exporter):
    dense_path = exported_model_factory(arch, exporter)
    session = static_paged_session(dense_path, tmp_path, BUCKETS, layout="separate", block_size=BLOCK_SIZE,
                                   num_blocks=NUM_BLOCKS, max_context=MAX_CONTEXT)
    prompt_lens, decode_steps = (9, 4, 12), 3
    rng = np.random.default_rng(1)
    sequences = [[int(t) for t in rng.integers(1, VOCAB, n + decode_steps)] for n in prompt_lens]
    free = shuffled_blocks(NUM_BLOCKS, seed=5)
    blocks = [blocks_for(free, n + decode_steps, BLOCK_SIZE) for n in prompt_lens]
    dense = DenseRunner(dense_path)
    diffs = []
    for step in range(1 + decode_steps):
        spans = [(0, n) if step == 0 else (n + step - 1, n + step) for n in prompt_lens]
        feeds = step_feeds([SequenceStep(b, list(range(*span))) for b, span in zip(blocks, spans)], BLOCK_SIZE)
        ids = np.zeros(feeds["position_ids"].shape, np.int64)
        for row, (seq, (start, end)) in enumerate(zip(sequences, spans)):
            ids[row, : end - start] = seq[start:end]
        logits = session.run({**feeds, "input_ids": ids})
        for row, (seq, n) in enumerate(zip(sequences, prompt_lens)):
            want = dense.run(seq[: n + step], [n] + [1] * step)[-1]
            diffs.append(float(np.max(np.abs(logits[row, : len(want)] - want))))
    assert max(diffs) <= PAGED_ATOL, f"max abs diff {max(diffs):.3g}"


@pytest.mark.parametrize("arch,exporter", [c for c in EXPORTS if c not in STANDARD_GAPS])
def test_static_standard_exports_match_the_dense_export(exported_model_factory, tmp_path, arch, exporter):
    dense_path = exported_model_factory(arch, exporter)
    manifest, runners = standard_manifest(dense_path, tmp_path, [Bucket("prefill", 1, 12), Bucket("decode", 1, 1)],
                                          MAX_CONTEXT)
    sequence = [int(t) for t in np.random.default_rng(2).integers(1, VOCAB, 12)]
    cache, got = StandardKVCache(manifest, batch=1), []
    for tokens in [sequence[:9], sequence[9:10], sequence[10:11], sequence[11:12]]:
        artifact, feeds = cache.feeds([tokens])
        outputs = dict(zip(artifact.outputs, runners[artifact.path](feeds)))
        cache.update(artifact, outputs)
        got.append(outputs["logits"][0, : len(tokens)])
    want = DenseRunner(dense_path).run(sequence, [9, 1, 1, 1])
    assert max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)) <= PAGED_ATOL
