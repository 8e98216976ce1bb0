"""Step pools: a static program sees only its step's blocks, never the whole pool (pure NumPy).

MIGraphX's ScatterND returns a new buffer, so a program taking the whole pool
[NB, Hkv, bs, Dh] of every layer copied all of it every step: cost grew with
the pool. Instead each bucket [B, S] with MB table columns is compiled for
L = 1 + R·B·MB blocks (R = 2 rows, K and V, in the combined layout, else 1),
and the host keeps the pools:

    local block 0                         = block 0 (null; padding tokens write there)
    local block 1 + r·B·MB + b·MB + m     = block_table[b, (r,) m]
    host pools [NB, Hkv, bs, Dh] ─gather─▶ step pools [L, Hkv, bs, Dh] ─program─▶ updated step pools [L, ...]
    block_table ─▶ local table (the same for every step of a bucket);  slot_mapping ─▶ local slots
    real tokens (slot not in block 0):  pool[slot // bs, :, slot % bs] = updated[local // bs, :, local % bs]

The paged graph is unchanged (it scatters and gathers by whatever table and
slots it is fed), so masks, padding and block 0 keep the ABI's meaning. Per
step the host copies the step's blocks in and the new tokens' rows out: cost
follows B·MB (the bucket's context), not NB.

Worked example, bs 4, bucket [B=1, S=1], MB 2, block_table [[7, 2]], slot 9 (block 2, offset 1):
    gather ids [0, 7, 2], local table [[1, 2]], local slot 2·4 + 1 = 9, written back to pool[2, :, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_POOLS = "step_blocks"       # manifest.backend_options["pools"]: artifacts take step pools


def step_pool_blocks(batch: int, max_blocks: int, is_combined: bool) -> int:
    """L: blocks of a step pool for a bucket of `batch` rows and `max_blocks` table columns."""
    return 1 + (2 if is_combined else 1) * batch * max_blocks


@dataclass(frozen=True)
class StepBlocks:
    """One step's blocks: which host blocks fill the step pools, and the table and slots that address them."""

    gather_ids: np.ndarray     # [L] host block of each local block (0 first)
    local_table: np.ndarray    # like block_table: [B, MB] | [B, 2, MB]
    local_slots: np.ndarray    # like slot_mapping: [N] | [2, N]
    host_slots: np.ndarray     # [W] slots written this step (real tokens, every K/V row)
    written: np.ndarray        # [W] the same slots in the step pools

    @classmethod
    def of(cls, block_table: np.ndarray, slot_mapping: np.ndarray, block_size: int) -> "StepBlocks":
        """From a padded step's block_table [B, (2,) MB] and slot_mapping [(2,) N], N = B·S."""
        table = block_table.reshape(block_table.shape[0], -1, block_table.shape[-1]).transpose(1, 0, 2)  # [R, B, MB]
        slots = slot_mapping.reshape(table.shape[0], -1).astype(np.int64)                                   # [R, N]
        rows, batch, max_blocks = table.shape
        local = 1 + np.arange(rows * batch * max_blocks).reshape(rows, batch, max_blocks)                 # [R, B, MB]
        blocks, offsets = slots // block_size, slots % block_size
        seq = np.repeat(np.arange(batch), slots.shape[1] // batch)[None].repeat(rows, axis=0)            # [R, N]
        matches = table[np.arange(rows)[:, None], seq] == blocks[..., None]                            # [R, N, MB]
        column = matches.argmax(axis=-1)
        is_real = blocks != 0
        if not matches.any(axis=-1)[is_real].all():
            raise ValueError("slot_mapping writes a block that is not in its sequence's block_table; every "
                             "token's slot must be block_table[b][position // block_size] (DESIGN.md §3)")
        local_blocks = np.where(is_real, local[np.arange(rows)[:, None], seq, column], 0)
        local_slots = local_blocks * block_size + offsets
        return cls(
            gather_ids=np.concatenate([[0], table.reshape(-1)]).astype(np.int64),
            local_table=local.transpose(1, 0, 2).reshape(block_table.shape).astype(block_table.dtype),
            local_slots=local_slots.reshape(slot_mapping.shape).astype(slot_mapping.dtype),
            host_slots=slots[is_real], written=local_slots[is_real])

    def gather(self, pool: np.ndarray) -> np.ndarray:
        """[NB, Hkv, bs, Dh] host pool -> [L, Hkv, bs, Dh] step pool (a copy)."""
        return pool[self.gather_ids]

    def write_back(self, pool: np.ndarray, updated: np.ndarray) -> None:
        """Copy this step's new K/V rows from the program's updated step pool into the host pool."""
        bs = pool.shape[2]
        pool[self.host_slots // bs, :, self.host_slots % bs] = updated[self.written // bs, :, self.written % bs]
