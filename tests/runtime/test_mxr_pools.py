"""Step pools: the step's blocks gathered from the host pools, addressed by a local table and local slots."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.runtime.sessions.mxr_pools import StepBlocks, step_pool_blocks


def test_the_docstring_example():
    blocks = StepBlocks.of(np.array([[7, 2]], np.int32), np.array([9], np.int32), block_size=4)
    assert blocks.gather_ids.tolist() == [0, 7, 2]
    assert blocks.local_table.tolist() == [[1, 2]] and blocks.local_table.dtype == np.int32
    assert blocks.local_slots.tolist() == [9] and blocks.local_slots.dtype == np.int32
    assert (blocks.host_slots.tolist(), blocks.written.tolist()) == ([9], [9])


def test_padding_rows_and_columns_write_the_local_null_block_and_nothing_back():
    # bucket [B=2, S=2], MB 3: row 0 has tokens at positions 4, 5 (block 5 at column 1); row 1 is padding
    table = np.array([[3, 5, 0], [0, 0, 0]], np.int32)
    slots = np.array([5 * 4 + 0, 5 * 4 + 1, 0, 0], np.int32)
    blocks = StepBlocks.of(table, slots, block_size=4)
    assert blocks.gather_ids.tolist() == [0, 3, 5, 0, 0, 0, 0]
    assert blocks.local_table.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert blocks.local_slots.tolist() == [8, 9, 0, 0]
    assert blocks.host_slots.tolist() == [20, 21] and blocks.written.tolist() == [8, 9]


def test_combined_rows_get_their_own_local_blocks():
    table = np.array([[[7, 2]], [[4, 9]]], np.int32).reshape(1, 2, 2)   # K blocks [7, 2], V blocks [4, 9]
    slots = np.array([[2 * 4 + 1], [9 * 4 + 1]], np.int32)              # position 5: K block 2, V block 9
    blocks = StepBlocks.of(table, slots, block_size=4)
    assert step_pool_blocks(1, 2, is_combined=True) == len(blocks.gather_ids) == 5
    assert blocks.gather_ids.tolist() == [0, 7, 2, 4, 9]
    assert blocks.local_table.tolist() == [[[1, 2], [3, 4]]]
    assert blocks.local_slots.tolist() == [[9], [17]]


def test_gather_and_write_back_touch_only_the_steps_rows():
    pool = np.arange(10 * 1 * 4 * 2, dtype=np.float32).reshape(10, 1, 4, 2)      # [NB, Hkv, bs, Dh]
    blocks = StepBlocks.of(np.array([[7, 2]], np.int32), np.array([9], np.int32), block_size=4)
    local = blocks.gather(pool)
    np.testing.assert_array_equal(local[1], pool[7])
    updated = local + 1000
    before = pool.copy()
    blocks.write_back(pool, updated)
    changed = np.argwhere(pool != before)
    assert {tuple(i[:3]) for i in changed} == {(2, 0, 1)}       # block 2, head 0, offset 1: slot 9 only
    np.testing.assert_array_equal(pool[2, 0, 1], before[2, 0, 1] + 1000)


def test_a_slot_outside_the_sequences_blocks_is_refused():
    with pytest.raises(ValueError, match="not in its sequence's block_table"):
        StepBlocks.of(np.array([[7, 2]], np.int32), np.array([3 * 4], np.int32), block_size=4)
