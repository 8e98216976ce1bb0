"""Step inputs of the paged ABI (DESIGN.md §3) from per-sequence block lists and positions.

Pure NumPy; the block manager decides which blocks a sequence owns, this module
only lays them out. Worked example, block_size=4, one sequence with blocks
[7, 2] and new tokens at positions 4, 5:

    slot_mapping = [2*4 + 0, 2*4 + 1] = [8, 9]     block_table = [[7, 2]]
    context_lens = [6]                             position_ids = [[4, 5]]

Padding (shorter sequences in a ragged batch, unused table entries) points at
the null block 0: padded `block_table` entries are 0 and padding tokens write
to slots inside block 0, never to −1 (ONNX wraps negative indices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagedc.errors import RequestError

NULL_BLOCK = 0


@dataclass(frozen=True)
class SequenceStep:
    """One sequence's part of a step: its blocks, the positions of its new tokens, and those tokens.

    `key_blocks` covers positions 0..context_len-1 (block i holds positions
    i*block_size ..). `value_blocks` is set only in the combined layout, where
    V blocks may differ from K blocks. `token_ids` (the new tokens, one per
    position) fill `input_ids` when given. PagedKVCacheManager.append returns
    one of these: the step's data, built once where the slots are reserved.
    """

    key_blocks: list[int]
    positions: list[int]
    value_blocks: list[int] | None = None
    token_ids: tuple[int, ...] = ()

    def slots(self, block_size: int) -> np.ndarray:
        """int32 [n] slots of the new tokens, or [2, n] (K row, V row) when V blocks are separate."""
        rows = [slots_of(blocks, self.positions, block_size) for blocks in _rows(self, self.value_blocks is not None)]
        return np.stack(rows) if len(rows) > 1 else rows[0]


def step_feeds(steps: list[SequenceStep], block_size: int, *, layout: str = "separate",
               num_tokens: int | None = None, max_blocks: int | None = None, batch: int | None = None) -> dict[str, np.ndarray]:
    """block_table, slot_mapping, context_lens, position_ids (and input_ids, when the steps carry their
    token ids) for one step, padded to the given sizes: the one place a step becomes the ABI's inputs.

    num_tokens (S) defaults to the longest sequence's new tokens, max_blocks to
    the longest table, batch to len(steps); larger values pad (static shapes).
    Padding tokens are id 0.
    """
    seq_len = num_tokens or max(len(s.positions) for s in steps)
    max_blocks = max_blocks or max(len(s.key_blocks) for s in steps)
    batch = batch or len(steps)
    _check_sizes(steps, block_size, seq_len, max_blocks, batch)
    is_combined = layout == "combined"
    position_ids = np.zeros((batch, seq_len), np.int64)                 # [B, S]
    context_lens = np.zeros((batch,), np.int32)                          # [B]
    tables = np.full((2 if is_combined else 1, batch, max_blocks), NULL_BLOCK, np.int32)
    # Padding token s writes to slot s % block_size of the null block.
    pad_slots = np.arange(batch * seq_len, dtype=np.int32) % block_size
    slots = np.stack([pad_slots, pad_slots]) if is_combined else pad_slots[None].copy()
    for b, step in enumerate(steps):
        count = len(step.positions)
        position_ids[b, :count] = step.positions
        context_lens[b] = max(step.positions) + 1 if count else 0
        for row, blocks in enumerate(_rows(step, is_combined)):
            tables[row, b, : len(blocks)] = blocks
            slots[row, b * seq_len : b * seq_len + count] = slots_of(blocks, step.positions, block_size)
    block_table = tables.transpose(1, 0, 2) if is_combined else tables[0]
    feeds = {
        "block_table": np.ascontiguousarray(block_table),   # [B, MB] or [B, 2, MB] int32
        "slot_mapping": slots if is_combined else slots[0],   # [B*S] or [2, B*S] int32
        "context_lens": context_lens,
        "position_ids": position_ids,
    }
    if any(step.token_ids for step in steps):
        feeds["input_ids"] = np.zeros((batch, seq_len), np.int64)          # [B, S]
        for b, step in enumerate(steps):
            feeds["input_ids"][b, : len(step.token_ids)] = step.token_ids
    return feeds


def _rows(step: SequenceStep, is_combined: bool) -> list[list[int]]:
    if not is_combined:
        return [step.key_blocks]
    return [step.key_blocks, step.value_blocks if step.value_blocks is not None else step.key_blocks]


def slots_of(blocks: list[int], positions, block_size: int) -> np.ndarray:
    """int32 slot of each position: blocks[p // block_size] * block_size + p % block_size."""
    return np.asarray([blocks[p // block_size] * block_size + p % block_size for p in positions], np.int32)


def _check_sizes(steps: list[SequenceStep], block_size: int, seq_len: int, max_blocks: int, batch: int) -> None:
    if not steps:
        raise RequestError("a step needs at least one sequence")
    if len(steps) > batch:
        raise RequestError(f"{len(steps)} sequences do not fit a batch of {batch}")
    for i, step in enumerate(steps):
        if step.token_ids and len(step.token_ids) != len(step.positions):
            raise RequestError(f"sequence {i} has {len(step.token_ids)} token ids for {len(step.positions)} positions")
        if len(step.positions) > seq_len:
            raise RequestError(f"sequence {i} has {len(step.positions)} new tokens; the step takes at most {seq_len}")
        needed = (max(step.positions) // block_size + 1) if step.positions else 0
        for blocks in (step.key_blocks, step.value_blocks or step.key_blocks):
            if len(blocks) < needed:
                raise RequestError(f"sequence {i} reaches position {max(step.positions)} but has only {len(blocks)} "
                                 f"block(s) of {block_size}")
            if len(blocks) > max_blocks:
                raise RequestError(f"sequence {i} has {len(blocks)} blocks; the table holds {max_blocks}")
            if NULL_BLOCK in blocks:
                raise RequestError(f"sequence {i} uses the null block {NULL_BLOCK}; it is reserved for padding")
