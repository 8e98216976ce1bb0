"""The lowered static paged models, run by ONNX Runtime at their static shapes, match the dense model.

Ragged batches padded to the bucket (extra rows: context 0, null block; extra
columns: slot 0 of the null block, position 0), shuffled non-contiguous blocks,
both layouts and forms, a prefill bucket then decode-bucket steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.mxr.lowering import Bucket
from pagedc.runtime.block_manager import PagedKVCacheManager
from pagedc.runtime.feeds import SequenceStep, step_feeds
from tests.compiler.mxr_harness import static_paged_session
from tests.conftest import PAGED_ATOL
from tests.paged_harness import DenseRunner, blocks_for, shuffled_blocks

BLOCK_SIZE, NUM_BLOCKS, MAX_CONTEXT = 4, 48, 24
PROMPTS = [[5, 17, 3, 9, 60], [2, 4, 6, 8, 10, 12, 14, 16], [40, 41]]   # ragged: 5, 8, 2 tokens
DECODE = [[11, 12, 13], [21, 22, 23], [31, 32, 33]]                   # fed tokens, not sampled


@pytest.mark.parametrize("form,layout,step_pools", [
    ("decomposed", "separate", True), ("decomposed", "combined", True), ("gqa", "separate", True),
    ("gqa", "combined", True), ("gqa", "separate", False),     # False: programs over the whole pool (older compiles)
])
def test_static_buckets_match_the_dense_model(dense_model, tmp_path, form, layout, step_pools):
    dense = dense_model(form)
    buckets = [Bucket("prefill", 4, 8), Bucket("decode", 4, 1)]
    paged = static_paged_session(dense, tmp_path, buckets, layout=layout, block_size=BLOCK_SIZE,
                                 num_blocks=NUM_BLOCKS, max_context=MAX_CONTEXT, step_pools=step_pools)
    pool = paged.manifest.pools[0].inputs[0]
    assert paged.manifest.artifacts[1].inputs[pool][0] == (NUM_BLOCKS if not step_pools else
                                                           1 + (2 if layout == "combined" else 1) * 4 * 6)
    # The last block goes first: padding that lands outside the null block (e.g. a wrapped -1) hits real KV.
    free = [NUM_BLOCKS - 1] + [b for b in shuffled_blocks(NUM_BLOCKS, seed=3) if b != NUM_BLOCKS - 1]
    total = [len(p) + len(d) for p, d in zip(PROMPTS, DECODE)]
    keys = [blocks_for(free, n, BLOCK_SIZE) for n in total]
    values = [blocks_for(free, n, BLOCK_SIZE) for n in total] if layout == "combined" else [None] * 3
    got = [[] for _ in PROMPTS]
    steps = [PROMPTS] + [[d[i : i + 1] for d in DECODE] for i in range(3)]
    done = [0, 0, 0]
    for tokens in steps:
        seqs = [SequenceStep(k, list(range(n, n + len(t))), v, tuple(t)) for k, v, n, t in zip(keys, values, done, tokens)]
        feeds = step_feeds(seqs, BLOCK_SIZE, layout=layout)          # tight [3, S], MB = longest table
        logits = paged.run(feeds)
        assert logits.shape[:2] == feeds["position_ids"].shape
        assert paged.last_artifact.phase == ("prefill" if tokens is PROMPTS else "decode")
        for b, row in enumerate(tokens):
            got[b].append(logits[b, : len(row)])
            done[b] += len(row)
    for b, (prompt, decode) in enumerate(zip(PROMPTS, DECODE)):
        want = DenseRunner(dense).run(prompt + decode, [len(prompt), 1, 1, 1])
        for step_got, step_want in zip(got[b], want):
            np.testing.assert_allclose(step_got, step_want, atol=PAGED_ATOL, rtol=0)


def test_manager_steps_pick_the_smallest_bucket_and_match(dense_model, tmp_path):
    """Feeds straight from PagedKVCacheManager.append + step_feeds; two batch sizes of buckets."""
    dense = dense_model("gqa")
    buckets = [Bucket("prefill", 2, 8), Bucket("prefill", 4, 8), Bucket("decode", 2, 1), Bucket("decode", 4, 1)]
    paged = static_paged_session(dense, tmp_path, buckets, layout="separate", block_size=BLOCK_SIZE,
                                 num_blocks=NUM_BLOCKS, max_context=MAX_CONTEXT)
    manager = PagedKVCacheManager(NUM_BLOCKS, BLOCK_SIZE)
    prompts, picked, got = PROMPTS[:2], [], [[], []]
    for seq_id in range(len(prompts)):
        manager.add(seq_id)
    steps = [prompts] + [[d[i : i + 1] for d in DECODE[:2]] for i in range(3)]
    for tokens in steps:
        feeds = step_feeds([manager.append(seq_id, len(row), row) for seq_id, row in enumerate(tokens)], BLOCK_SIZE)
        logits = paged.run(feeds)
        picked.append(paged.last_artifact.path)
        for b, row in enumerate(tokens):
            got[b].append(logits[b, : len(row)])
    assert picked == ["prefill_b2_s8.onnx"] + ["decode_b2.onnx"] * 3
    for b, (prompt, decode) in enumerate(zip(prompts, DECODE)):
        want = DenseRunner(dense).run(prompt + decode, [len(prompt), 1, 1, 1])
        for step_got, step_want in zip(got[b], want):
            np.testing.assert_allclose(step_got, step_want, atol=PAGED_ATOL, rtol=0)


@pytest.mark.parametrize("form,layout", [("decomposed", "combined"), ("gqa", "separate")])
def test_static_buckets_with_last_token_logits_match_the_dense_last_rows(dense_model, tmp_path, form, layout):
    """--logits last lowered for MIGraphX: [B', 1, V] from every bucket, batch padding cut off, each row's last
    new token equal to the dense model's; the extra padding rows of the bucket (positions 0) are harmless."""
    dense = dense_model(form)
    buckets = [Bucket("prefill", 4, 8), Bucket("decode", 4, 1)]
    paged = static_paged_session(dense, tmp_path, buckets, layout=layout, block_size=BLOCK_SIZE,
                                 num_blocks=NUM_BLOCKS, max_context=MAX_CONTEXT, last_logits=True)
    assert paged.manifest.logits == "last"
    manager = PagedKVCacheManager(NUM_BLOCKS, BLOCK_SIZE, layout)
    manager.shuffle_free_blocks(3)
    for seq_id in range(len(PROMPTS)):
        manager.add(seq_id)
    got = [[] for _ in PROMPTS]
    for tokens in [PROMPTS] + [[d[i : i + 1] for d in DECODE] for i in range(3)]:
        logits = paged.run(step_feeds([manager.append(b, len(row), row) for b, row in enumerate(tokens)],
                                      BLOCK_SIZE, layout=layout))
        assert logits.shape == (len(PROMPTS), 1, 97)
        for b in range(len(PROMPTS)):
            got[b].append(logits[b, 0])
    for b, (prompt, decode) in enumerate(zip(PROMPTS, DECODE)):
        want = DenseRunner(dense).run(prompt + decode, [len(prompt), 1, 1, 1])
        for step_got, step_want in zip(got[b], want):
            np.testing.assert_allclose(step_got, step_want[-1], atol=PAGED_ATOL, rtol=0)
