"""Rotary positions of the new tokens, as each form's runtime derives them.

attention_mask is `[B, T]` (T = past + new); both helpers return `[B, S]`
int64 positions for the last S = T - past_len columns.

Worked example, batch of prompts of lengths 3 and 1, then one decode step:

    left padding (HF, form A)       mask [[1,1,1],[0,0,1]]      hf_position_ids  -> [[0,1,2],[1,1,0]]
      decode                        mask [[1,1,1,1],[0,0,1,1]]  hf_position_ids  -> [[3],[1]]
    right padding (genai, form B)   mask [[1,1,1],[1,0,0]]      gqa_position_ids -> [[0,1,2],[0,1,2]]
      decode                        mask [[1,1,1,1],[1,0,0,1]]  gqa_position_ids -> [[3],[1]]
"""

from __future__ import annotations

import numpy as np


def hf_position_ids(attention_mask: np.ndarray, past_len: int) -> np.ndarray:
    """HF generate(): cumsum(mask) - 1, padding positions set to 1."""
    mask = np.asarray(attention_mask)
    positions = np.cumsum(mask, axis=1) - 1  # [B, T]
    positions = np.where(mask == 0, 1, positions)
    return positions[:, past_len:].astype(np.int64)  # [B, S]


def gqa_position_ids(attention_mask: np.ndarray, past_len: int) -> np.ndarray:
    """Positions com.microsoft.GroupQueryAttention (ORT CPU) gives rotary without a position_ids input.

    ORT sees the mask only as seqlens_k = sum(mask) - 1 and T = mask.shape[1]:
    - first prompt (past_len == 0, i.e. S == T): position s for column s of
      every row, padding included (pads sit on the right, so real tokens get 0..len-1);
    - otherwise: token s of row b is at sum(mask[b]) - S + s, i.e. right after
      the sequence's own tokens, wherever its mask column is.
    """
    mask = np.asarray(attention_mask)
    batch, total = mask.shape
    seq = total - past_len
    if past_len == 0:
        return np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    start = mask.sum(axis=1).astype(np.int64) - seq  # [B] cache index of the first new token
    return start[:, None] + np.arange(seq, dtype=np.int64)[None, :]
