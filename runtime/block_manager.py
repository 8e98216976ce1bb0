"""PagedKVCacheManager: which cache blocks each sequence holds, shared prefixes, and the step inputs.

Knows nothing of devices or sessions: it hands out block ids, tracks sharing,
and lays out `block_table`, `slot_mapping`, `context_lens` and `position_ids`
(DESIGN.md §3). Copies a copy-on-write needs are queued for the runtime
(`take_copies`), which performs them on its pools before the next step.

A *unit* is what one logical block of a sequence occupies: one block id in
the separate layout, a (K block, V block) pair in the combined layout.

Invariants (`check_invariants()`):
- block 0 is the null block: never free, never held; padding points at it;
- every unit is either free (on the free queue) or held, and its ref count
  equals the number of sequence tables holding it;
- a sequence of n tokens holds exactly ceil(n / block_size) units;
- a cached unit (full, hashed) is found under its hash; free cached units stay
  reusable until the allocator evicts them, least recently freed first.

Prefix caching: a full block is named by sha256(parent digest, its token ids,
cache key). NOTE: sha256 rather than Python's hash(): a collision would
silently feed one prompt another prompt's KV, and with a 256-bit chained
digest that is not a practical event, so hits need no token comparison.
Blocks are cached once computed (see _register_full_units). Freed sequences
put their blocks on the free queue tail-block first, so a chain is evicted
from its tail and its head (the most shareable part) lives longest.

Worked example, block_size=4: a sequence of 6 tokens with blocks [7, 2] keeps
positions 0..3 in slots 28..31 and positions 4, 5 in slots 8, 9.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pagedc.errors import RequestError
from pagedc.manifest_schema import LAYOUTS
from pagedc.runtime.checks import require_bool, require_int, token_ids as checked_token_ids
from pagedc.runtime.feeds import NULL_BLOCK, SequenceStep

Unit = tuple[int, ...]          # (block,) or (key_block, value_block)


@dataclass
class _Sequence:
    units: list[Unit] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)    # known tokens (hashing needs them)
    num_tokens: int = 0         # tokens whose KV is (or is being) written
    num_new: int = 0            # tokens of the last append: reserved, not yet known to be computed
    num_hashed: int = 0         # leading units that are full and registered in the cache
    parent_digest: bytes = b""  # digest of unit num_hashed - 1
    cache_key: str = ""


class PagedKVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, layout: str = "separate", enable_prefix_caching: bool = True):
        num_blocks = require_int("num_blocks", num_blocks, minimum=2)
        block_size = require_int("block_size", block_size, minimum=1)
        if layout not in LAYOUTS:
            raise RequestError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        require_bool("enable_prefix_caching", enable_prefix_caching)
        self.num_blocks, self.block_size, self.layout = num_blocks, block_size, layout
        self.is_combined = layout == "combined"
        self.enable_prefix_caching = enable_prefix_caching
        ids = list(range(1, num_blocks))
        units = [tuple(ids[i : i + 2]) for i in range(0, len(ids) - 1, 2)] if self.is_combined else [(b,) for b in ids]
        self._free: OrderedDict[Unit, None] = OrderedDict.fromkeys(units)   # head = next to allocate / evict
        self._ref: dict[Unit, int] = {}
        self._digest_of: dict[Unit, bytes] = {}
        self._cached: dict[bytes, Unit] = {}
        self._seqs: dict[Hashable, _Sequence] = {}
        self._copies: list[tuple[int, int]] = []
        self.counters = {"prefix_queries": 0, "prefix_hits": 0, "prefix_hit_tokens": 0, "prefix_query_tokens": 0,
                         "evictions": 0, "cow_copies": 0}

    @classmethod
    def from_manifest(cls, manifest, enable_prefix_caching: bool = True) -> "PagedKVCacheManager":
        return cls(manifest.num_blocks, manifest.block_size, manifest.layout, enable_prefix_caching)

    @property
    def num_units(self) -> int:
        return (self.num_blocks - 1) // (2 if self.is_combined else 1)

    @property
    def num_free_blocks(self) -> int:
        """Free units (cached or not); one unit per logical block in either layout."""
        return len(self._free)

    def shuffle_free_blocks(self, seed: int) -> None:
        """Hand out free units in a seeded random order (verification: tables become non-contiguous)."""
        units = list(self._free)
        self._free = OrderedDict.fromkeys(units[i] for i in np.random.default_rng(seed).permutation(len(units)))

    # -- sequences ---------------------------------------------------------------------
    def add(self, seq_id: Hashable, prompt_token_ids: Sequence[int] = (), cache_key: str = "") -> int:
        """Start a sequence; with prefix caching, take every cached full block of its prompt.

        Returns the number of prompt tokens already in the cache (a multiple of
        block_size, always < len(prompt) so the last token is computed).
        """
        if seq_id in self._seqs:
            raise RequestError(f"sequence {seq_id!r} is already in the cache; free it first or use a new id")
        prompt_token_ids = checked_token_ids("prompt_token_ids", prompt_token_ids)
        seq = _Sequence(token_ids=prompt_token_ids, cache_key=cache_key)
        self._seqs[seq_id] = seq
        if not (self.enable_prefix_caching and prompt_token_ids):
            return 0
        self.counters["prefix_queries"] += 1
        self.counters["prefix_query_tokens"] += len(prompt_token_ids)
        for start in range(0, len(prompt_token_ids) - 1 - self.block_size + 1, self.block_size):
            digest = self._digest(seq.parent_digest, seq.token_ids[start : start + self.block_size], cache_key)
            unit = self._cached.get(digest)
            if unit is None:
                break
            self._hold(unit)
            seq.units.append(unit)
            seq.num_hashed, seq.parent_digest = seq.num_hashed + 1, digest
        seq.num_tokens = len(seq.units) * self.block_size
        if seq.num_tokens:
            self.counters["prefix_hits"] += 1
            self.counters["prefix_hit_tokens"] += seq.num_tokens
        return seq.num_tokens

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """The child shares all of the parent's blocks; the first write into a shared block copies it."""
        if child in self._seqs:
            raise RequestError(f"sequence {child!r} is already in the cache; fork into a new id")
        src = self._seq(parent)
        for unit in src.units:
            self._ref[unit] += 1
        self._seqs[child] = _Sequence(list(src.units), list(src.token_ids), src.num_tokens, 0, src.num_hashed,
                                      src.parent_digest, src.cache_key)

    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence; units no other sequence holds go back to the free queue, tail first."""
        seq = self._seq(seq_id)
        self._register_full_units(seq, seq.num_tokens - seq.num_new)   # the last append may not have run
        del self._seqs[seq_id]
        for unit in reversed(seq.units):
            self._ref[unit] -= 1
            if self._ref[unit] == 0:
                del self._ref[unit]
                self._free[unit] = None

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._seq(seq_id).num_tokens

    def block_ids(self, seq_id: Hashable) -> tuple[list[int], list[int] | None]:
        units = self._seq(seq_id).units
        return [u[0] for u in units], ([u[1] for u in units] if self.is_combined else None)

    # -- appending ---------------------------------------------------------------------
    def blocks_needed(self, seq_id: Hashable, num_new: int) -> int:
        """Free units an append of `num_new` tokens takes (new blocks, plus a copy of a shared last block)."""
        seq = self._seq(seq_id)
        num_new = require_int("num_new", num_new, minimum=0)
        extra = self._units_for(seq.num_tokens + num_new) - len(seq.units)
        return extra + int(num_new > 0 and self._last_unit_is_shared(seq))

    def can_append(self, seq_id: Hashable, num_new: int) -> bool:
        return self.blocks_needed(seq_id, num_new) <= len(self._free)

    def append(self, seq_id: Hashable, num_new: int, token_ids: Sequence[int] | None = None) -> SequenceStep:
        """Reserve slots for `num_new` tokens; returns this sequence's part of the step (its blocks, the new
        positions and tokens), which `step_feeds` turns into the ABI inputs; `.slots(block_size)` are the slots.

        `token_ids` (the new tokens) let completed blocks join the prefix cache and fill `input_ids`.
        Call `can_append` first: here running out raises before anything changes.
        """
        seq = self._seq(seq_id)
        num_new = require_int("num_new", num_new, minimum=0)
        if token_ids is not None and len(token_ids := checked_token_ids("token_ids", token_ids)) != num_new:
            raise RequestError(f"append({seq_id!r}, {num_new}) was given {len(token_ids)} token ids; give exactly num_new")
        self._check_capacity(seq_id, seq.num_tokens + num_new)
        needed = self.blocks_needed(seq_id, num_new)
        if needed > len(self._free):
            raise RuntimeError(f"sequence {seq_id!r} needs {needed} free block(s), {len(self._free)} are free; "
                               "check can_append() before append()")
        self._register_full_units(seq, seq.num_tokens)   # everything appended before now has been computed
        if num_new and self._last_unit_is_shared(seq):
            self._copy_on_write(seq)
        while len(seq.units) < self._units_for(seq.num_tokens + num_new):
            seq.units.append(self._allocate())
        positions = range(seq.num_tokens, seq.num_tokens + num_new)
        seq.num_tokens += num_new
        seq.num_new = num_new
        known = len(seq.token_ids)  # tokens given at add() or earlier appends
        if token_ids is not None and known < seq.num_tokens:
            seq.token_ids += list(token_ids)[known - (seq.num_tokens - num_new):]
        key_blocks, value_blocks = self.block_ids(seq_id)
        return SequenceStep(key_blocks, list(positions), value_blocks, tuple(token_ids) if token_ids is not None else ())

    def take_copies(self) -> list[tuple[int, int]]:
        """Block copies (src, dst) the runtime must apply to its pools before the next step."""
        copies, self._copies = self._copies, []
        return copies

    def max_tokens_per_sequence(self) -> int:
        return self.num_units * self.block_size

    # -- accounting --------------------------------------------------------------------
    def stats(self) -> dict:
        held = len(self._ref)
        tokens = sum(seq.num_tokens for seq in self._seqs.values())
        slots = sum(len(seq.units) for seq in self._seqs.values()) * self.block_size
        queried = self.counters["prefix_query_tokens"]
        return {
            "num_blocks": self.num_blocks, "blocks_used": held * (2 if self.is_combined else 1),
            "blocks_free": len(self._free) * (2 if self.is_combined else 1), "blocks_cached": len(self._cached),
            "num_sequences": len(self._seqs), "tokens_stored": tokens,
            "fragmentation": slots / tokens if tokens else 1.0,            # table slots per stored token
            "kv_usage": held / self.num_units,
            "prefix_hit_rate": self.counters["prefix_hit_tokens"] / queried if queried else 0.0,
            **self.counters,
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent (for tests)."""
        holders: dict[Unit, int] = {}
        for seq_id, seq in self._seqs.items():
            assert len(seq.units) == self._units_for(seq.num_tokens), f"{seq_id!r}: units vs {seq.num_tokens} tokens"
            for unit in seq.units:
                holders[unit] = holders.get(unit, 0) + 1
        assert holders == self._ref, "ref counts differ from the number of tables holding each unit"
        assert not set(self._free) & set(self._ref), "a unit is both free and held"
        blocks = sorted(b for unit in list(self._free) + list(self._ref) for b in unit)
        assert blocks == sorted(set(blocks)) and NULL_BLOCK not in blocks, "a block is duplicated or the null block"
        assert len(self._free) + len(self._ref) == self.num_units, "a unit was lost"
        for digest, unit in self._cached.items():
            assert self._digest_of.get(unit) == digest, "cache map and unit digests disagree"

    # -- internals ---------------------------------------------------------------------
    def _allocate(self) -> Unit:
        unit, _ = self._free.popitem(last=False)
        digest = self._digest_of.pop(unit, None)
        if digest is not None:
            del self._cached[digest]
            self.counters["evictions"] += 1
        self._ref[unit] = 1
        return unit

    def _hold(self, unit: Unit) -> None:
        if unit in self._free:
            del self._free[unit]
        self._ref[unit] = self._ref.get(unit, 0) + 1

    def _last_unit_is_shared(self, seq: _Sequence) -> bool:
        is_partial = seq.num_tokens % self.block_size != 0
        return bool(seq.units) and is_partial and self._ref[seq.units[-1]] > 1

    def _copy_on_write(self, seq: _Sequence) -> None:
        old = seq.units[-1]
        self._ref[old] -= 1
        seq.units[-1] = self._allocate()
        self._copies += list(zip(old, seq.units[-1]))
        self.counters["cow_copies"] += 1

    def _register_full_units(self, seq: _Sequence, num_computed: int) -> None:
        """Name and cache the full blocks among the first `num_computed` tokens.

        NOTE: a block is cached only once its KV has been computed (appends are
        run before the next append or free), so a prefix hit never reads a block
        whose write is still pending in another session run.
        """
        if not self.enable_prefix_caching:
            return
        while seq.num_hashed < min(num_computed, len(seq.token_ids)) // self.block_size:
            start = seq.num_hashed * self.block_size
            digest = self._digest(seq.parent_digest, seq.token_ids[start : start + self.block_size], seq.cache_key)
            unit = seq.units[seq.num_hashed]
            if digest not in self._cached and unit not in self._digest_of:
                self._cached[digest], self._digest_of[unit] = unit, digest
            seq.num_hashed, seq.parent_digest = seq.num_hashed + 1, digest

    @staticmethod
    def _digest(parent: bytes, token_ids: Sequence[int], cache_key: str) -> bytes:
        payload = ",".join(map(str, token_ids)).encode() + b"|" + cache_key.encode()
        return hashlib.sha256(parent + payload).digest()

    def _units_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _check_capacity(self, seq_id: Hashable, num_tokens: int) -> None:
        limit = self.max_tokens_per_sequence()
        if num_tokens > limit:
            raise RequestError(f"sequence {seq_id!r} would hold {num_tokens} tokens; the pool of {self.num_blocks} "
                             f"blocks x {self.block_size} tokens holds at most {limit} for one sequence")

    def _seq(self, seq_id: Hashable) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise KeyError(f"unknown sequence {seq_id!r}; add() it first") from None
