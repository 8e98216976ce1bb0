"""PagedKVCacheManager: which cache blocks each sequence owns, and the step inputs that follow.

Knows nothing of devices or sessions: it hands out block ids and lays out
`block_table`, `slot_mapping`, `context_lens` and `position_ids` (DESIGN.md §3).

Invariants (checked by `check_invariants()`):
- block 0 is the null block: never free, never owned; padding points at it;
- every other block is either on the free list or owned by exactly one sequence;
- a sequence of n tokens owns exactly ceil(n / block_size) K blocks (and as many
  V blocks in the combined layout, where K and V blocks come from one pool).

Worked example, block_size=4: a sequence of 6 tokens with blocks [7, 2] keeps
positions 0..3 in slots 28..31 and positions 4, 5 in slots 8, 9; appending 3
tokens takes one more block, say 5, for position 8 (slot 20).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pagedc.runtime.feeds import NULL_BLOCK, SequenceStep, step_feeds

LAYOUTS = ("separate", "combined")


@dataclass
class _SequenceBlocks:
    key_blocks: list[int] = field(default_factory=list)
    value_blocks: list[int] = field(default_factory=list)   # combined layout only
    num_tokens: int = 0         # tokens whose KV is (or is being) written
    num_new: int = 0            # tokens added by the last append (the current step's tokens)


class PagedKVCacheManager:
    """Block allocation from a free list (O(1) per block) and per-sequence block tables."""

    def __init__(self, num_blocks: int, block_size: int, layout: str = "separate"):
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block {NULL_BLOCK} is the null block), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.num_blocks, self.block_size, self.layout = num_blocks, block_size, layout
        self.is_combined = layout == "combined"
        self._free: deque[int] = deque(range(1, num_blocks))
        self._seqs: dict[Hashable, _SequenceBlocks] = {}

    @classmethod
    def from_manifest(cls, manifest) -> "PagedKVCacheManager":
        return cls(manifest.num_blocks, manifest.block_size, manifest.layout)

    def shuffle_free_blocks(self, seed: int) -> None:
        """Hand out free blocks in a seeded random order (verification: tables become non-contiguous)."""
        order = np.random.default_rng(seed).permutation(len(self._free))
        free = list(self._free)
        self._free = deque(free[i] for i in order)

    # -- sequences ---------------------------------------------------------------
    def add(self, seq_id: Hashable) -> None:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already in the cache; free it first or use a new id")
        self._seqs[seq_id] = _SequenceBlocks()

    def free(self, seq_id: Hashable) -> None:
        """Return all of a sequence's blocks to the free list."""
        seq = self._seq(seq_id)
        self._free.extend(seq.key_blocks)
        self._free.extend(seq.value_blocks)
        del self._seqs[seq_id]

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._seq(seq_id).num_tokens

    def block_ids(self, seq_id: Hashable) -> tuple[list[int], list[int] | None]:
        seq = self._seq(seq_id)
        return list(seq.key_blocks), (list(seq.value_blocks) if self.is_combined else None)

    # -- appending -----------------------------------------------------------------
    def blocks_needed(self, seq_id: Hashable, num_new: int) -> int:
        """Free blocks an append of `num_new` tokens takes (K and V blocks in the combined layout)."""
        seq = self._seq(seq_id)
        extra = self._num_blocks_for(seq.num_tokens + num_new) - len(seq.key_blocks)
        return extra * (2 if self.is_combined else 1)

    def can_append(self, seq_id: Hashable, num_new: int) -> bool:
        return self.blocks_needed(seq_id, num_new) <= len(self._free)

    def append(self, seq_id: Hashable, num_new: int) -> np.ndarray:
        """Reserve slots for `num_new` tokens; returns their slots ([n], or [2, n] K/V rows when combined).

        Call `can_append` first: running out of blocks is a normal answer there,
        and here it raises before anything changes.
        """
        seq = self._seq(seq_id)
        self._check_capacity(seq_id, seq.num_tokens + num_new)
        needed = self.blocks_needed(seq_id, num_new)
        if needed > len(self._free):
            raise RuntimeError(f"sequence {seq_id!r} needs {needed} free block(s), {len(self._free)} are free; "
                               "check can_append() before append()")
        for _ in range(needed // (2 if self.is_combined else 1)):
            seq.key_blocks.append(self._free.popleft())
            if self.is_combined:
                seq.value_blocks.append(self._free.popleft())
        positions = np.arange(seq.num_tokens, seq.num_tokens + num_new)
        seq.num_tokens += num_new
        seq.num_new = num_new
        rows = [seq.key_blocks] + ([seq.value_blocks] if self.is_combined else [])
        slots = [np.asarray(blocks)[positions // self.block_size] * self.block_size + positions % self.block_size
                 for blocks in rows]
        return np.stack(slots).astype(np.int32) if self.is_combined else slots[0].astype(np.int32)

    def max_tokens_per_sequence(self) -> int:
        """The most tokens one sequence can ever hold: every usable block."""
        per_token_blocks = 2 if self.is_combined else 1
        return (self.num_blocks - 1) // per_token_blocks * self.block_size

    def _check_capacity(self, seq_id: Hashable, num_tokens: int) -> None:
        limit = self.max_tokens_per_sequence()
        if num_tokens > limit:
            raise ValueError(f"sequence {seq_id!r} would hold {num_tokens} tokens; the pool of {self.num_blocks} "
                             f"blocks x {self.block_size} tokens holds at most {limit} for one sequence")

    # -- step inputs ---------------------------------------------------------------
    def step_inputs(self, seq_ids: Sequence[Hashable], *, num_tokens: int | None = None,
                    max_blocks: int | None = None, batch: int | None = None) -> dict[str, np.ndarray]:
        """block_table, slot_mapping, context_lens, position_ids for the tokens of the last append of each sequence."""
        steps = []
        for seq_id in seq_ids:
            seq = self._seq(seq_id)
            positions = list(range(seq.num_tokens - seq.num_new, seq.num_tokens))
            value_blocks = seq.value_blocks if self.is_combined else None
            steps.append(SequenceStep(seq.key_blocks, positions, value_blocks))
        return step_feeds(steps, self.block_size, layout=self.layout, num_tokens=num_tokens,
                          max_blocks=max_blocks, batch=batch)

    # -- accounting ----------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def stats(self) -> dict:
        used = self.num_blocks - 1 - len(self._free)
        tokens = sum(seq.num_tokens for seq in self._seqs.values())
        slots = sum(len(seq.key_blocks) for seq in self._seqs.values()) * self.block_size
        return {
            "num_blocks": self.num_blocks, "blocks_used": used, "blocks_free": len(self._free),
            "num_sequences": len(self._seqs), "tokens_stored": tokens,
            "fragmentation": slots / tokens if tokens else 1.0,   # allocated slots per stored token
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if the block accounting is inconsistent (for tests)."""
        owned = [b for seq in self._seqs.values() for b in seq.key_blocks + seq.value_blocks]
        free = list(self._free)
        assert NULL_BLOCK not in owned and NULL_BLOCK not in free, "null block handed out"
        assert len(set(owned)) == len(owned), "a block is owned twice"
        assert len(set(free)) == len(free), "a block is on the free list twice"
        assert not set(owned) & set(free), "a block is both free and owned"
        assert sorted(owned + free) == list(range(1, self.num_blocks)), "a block was lost"
        for seq_id, seq in self._seqs.items():
            expected = self._num_blocks_for(seq.num_tokens)
            assert len(seq.key_blocks) == expected, f"{seq_id!r}: {len(seq.key_blocks)} K blocks for {seq.num_tokens} tokens"
            assert len(seq.value_blocks) == (expected if self.is_combined else 0), f"{seq_id!r}: V blocks"

    # -- helpers -------------------------------------------------------------------
    def _num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _seq(self, seq_id: Hashable) -> _SequenceBlocks:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise KeyError(f"unknown sequence {seq_id!r}; add() it first") from None
