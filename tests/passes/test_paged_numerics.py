"""Tier 2: paged logits equal dense logits (each sequence run alone through the dense model)."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.passes.paged import LAYOUTS
from pagedc.passes.site import FORMS
from pagedc.runtime.feeds import SequenceStep
from tests.conftest import PAGED_ATOL, paged_copy
from tests.paged_harness import DenseRunner, PagedRunner, blocks_for, shuffled_blocks

BLOCK_SIZE = 4
NUM_BLOCKS = 40
VOCAB = 97


def _tokens(length: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(1, VOCAB, length)]


def _allocate(free: list[int], num_tokens: int, layout: str) -> dict:
    """K blocks, and in the combined layout separately taken V blocks (different ids)."""
    key_blocks = blocks_for(free, num_tokens, BLOCK_SIZE)
    value_blocks = blocks_for(free, num_tokens, BLOCK_SIZE) if layout == "combined" else None
    return {"key_blocks": key_blocks, "value_blocks": value_blocks}


def _assert_close(paged: np.ndarray, dense: np.ndarray, what: str) -> None:
    diff = float(np.max(np.abs(paged - dense)))
    assert diff <= PAGED_ATOL, f"{what}: max abs diff {diff:.3g} > {PAGED_ATOL}"


def _check_ragged_prefill_then_decode(dense_path, paged_path, layout, prompt_lens, decode_steps, seed):
    """A padded ragged prefill then batched decode steps on shuffled blocks, each row vs the sequence alone."""
    sequences = [_tokens(n + decode_steps, seed=seed + i) for i, n in enumerate(prompt_lens)]
    dense = DenseRunner(dense_path)
    expected = [dense.run(seq, [n] + [1] * decode_steps) for seq, n in zip(sequences, prompt_lens)]
    paged = PagedRunner(paged_path, NUM_BLOCKS, BLOCK_SIZE, layout)
    free = shuffled_blocks(NUM_BLOCKS, seed=seed + 7)
    blocks = [_allocate(free, n + decode_steps, layout) for n in prompt_lens]
    steps = [SequenceStep(positions=list(range(n)), **blk) for n, blk in zip(prompt_lens, blocks)]
    logits = paged.step([seq[:n] for seq, n in zip(sequences, prompt_lens)], steps)
    for b, n in enumerate(prompt_lens):
        _assert_close(logits[b, :n], expected[b][0], f"prefill, sequence {b}")
    for t in range(decode_steps):
        steps = [SequenceStep(positions=[n + t], **blk) for n, blk in zip(prompt_lens, blocks)]
        logits = paged.step([[seq[n + t]] for seq, n in zip(sequences, prompt_lens)], steps)
        for b in range(len(prompt_lens)):
            _assert_close(logits[b, :1], expected[b][1 + t], f"decode step {t}, sequence {b}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("prompt_lens", [(6,), (5, 3, 7)], ids=["batch1", "ragged3"])
def test_prefill_then_decode_matches_dense(dense_model, tmp_path, form, layout, prompt_lens):
    dense_path = dense_model(form)
    paged_path, _ = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout)
    _check_ragged_prefill_then_decode(dense_path, paged_path, layout, prompt_lens, decode_steps=8, seed=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_chunked_prefill_matches_dense(dense_model, tmp_path, form, layout):
    dense_path = dense_model(form)
    paged_path, _ = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout)
    tokens = _tokens(11, seed=3)
    expected = DenseRunner(dense_path).run(tokens, [11])[0]
    paged = PagedRunner(paged_path, NUM_BLOCKS, BLOCK_SIZE, layout)
    blk = _allocate(shuffled_blocks(NUM_BLOCKS, seed=1), 11, layout)
    first = paged.step([tokens[:6]], [SequenceStep(positions=list(range(6)), **blk)])
    second = paged.step([tokens[6:]], [SequenceStep(positions=list(range(6, 11)), **blk)])
    _assert_close(first[0, :6], expected[:6], "chunk 1")
    _assert_close(second[0, :5], expected[6:], "chunk 2")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_shared_prefix_blocks_match_dense(dense_model, tmp_path, form, layout):
    """B reuses A's first two full blocks and computes only its own suffix (prefix-cached prefill)."""
    dense_path = dense_model(form)
    paged_path, _ = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout)
    seq_a = _tokens(10, seed=11)
    seq_b = seq_a[:8] + _tokens(3, seed=12)
    dense = DenseRunner(dense_path)
    expected_a, expected_b = dense.run(seq_a, [10])[0], dense.run(seq_b, [11])[0]
    paged = PagedRunner(paged_path, NUM_BLOCKS, BLOCK_SIZE, layout)
    free = shuffled_blocks(NUM_BLOCKS, seed=5)
    blk_a = _allocate(free, 10, layout)
    shared = {k: (v[:2] + blocks_for(free, 3, BLOCK_SIZE) if v is not None else None) for k, v in blk_a.items()}
    logits_a = paged.step([seq_a], [SequenceStep(positions=list(range(10)), **blk_a)])
    logits_b = paged.step([seq_b[8:]], [SequenceStep(positions=[8, 9, 10], **shared)])
    _assert_close(logits_a[0, :10], expected_a, "sequence A")
    _assert_close(logits_b[0, :3], expected_b[8:], "sequence B suffix over shared blocks")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_sliding_window_layers_match_dense(dense_model, tmp_path, form, layout):
    """Window 3 with block_size 4: the window crosses block boundaries in prefill and decode."""
    dense_path = dense_model(form, sliding_window=3)
    paged_path, _ = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout)
    _check_ragged_prefill_then_decode(dense_path, paged_path, layout, (7, 2, 5), decode_steps=6, seed=20)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sliding_window", [None, 3])
def test_fused_rotary_matches_dense(dense_model, tmp_path, layout, sliding_window):
    """Form B with com.microsoft.RotaryEmbedding (the ONNX Runtime target's rotary) instead of plain ops."""
    dense_path = dense_model("gqa", sliding_window=sliding_window)
    paged_path, _ = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout, fuse_rotary=True)
    _check_ragged_prefill_then_decode(dense_path, paged_path, layout, (7, 2, 5), decode_steps=6, seed=30)
