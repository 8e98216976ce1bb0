"""Padded prompt batches and a prefill + decode loop that feeds present back as past.

Each form is driven the way its own runtime drives it:
- "decomposed" (HF generate): LEFT padding, position_ids = hf_position_ids;
- "gqa" (onnxruntime-genai): RIGHT padding, no position_ids input.
Both append a column of ones to attention_mask per decode step.

    ids, mask = prompt_batch(config, [5, 3, 1], padding=PADDING[form], seed=0)
    steps = generate(forward, form, ids, mask, next_token_ids)   # forward: ORT or reference
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pagedc.testing.config import DecoderConfig
from pagedc.testing.positions import hf_position_ids

PAD_TOKEN_ID = 0
PADDING = {"decomposed": "left", "gqa": "right", "attention": "left", "mha": "left"}

# forward(input_ids, attention_mask, position_ids | None, past) -> (logits, present)
Forward = Callable[..., tuple[np.ndarray, list]]


@dataclass
class Step:
    input_ids: np.ndarray  # [B, S] int64
    attention_mask: np.ndarray  # [B, P + S] int64
    position_ids: np.ndarray | None  # [B, S] int64, form A only
    past_len: int
    logits: np.ndarray  # [B, S, V]
    present: list  # [(key, value)] [B, Hkv, P + S, Dh]


def prompt_batch(
    config: DecoderConfig, lengths: list[int], *, padding: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of the given lengths padded to the longest: input_ids, attention_mask `[B, S]` int64."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    rng = np.random.default_rng(seed)
    seq = max(lengths)
    input_ids = np.full((len(lengths), seq), PAD_TOKEN_ID, np.int64)
    attention_mask = np.zeros((len(lengths), seq), np.int64)
    for b, length in enumerate(lengths):
        columns = slice(seq - length, seq) if padding == "left" else slice(0, length)
        input_ids[b, columns] = rng.integers(1, config.vocab_size, length)
        attention_mask[b, columns] = 1
    return input_ids, attention_mask


def generate(
    forward: Forward, form: str, input_ids: np.ndarray, attention_mask: np.ndarray, next_token_ids: np.ndarray, past
) -> list[Step]:
    """Prefill, then one decode step per row of `next_token_ids` `[num_decode, B]`, feeding present back."""
    steps = []
    past_len = 0
    for step in range(1 + len(next_token_ids)):
        if step > 0:
            input_ids = np.asarray(next_token_ids[step - 1], np.int64)[:, None]  # [B, 1]
            ones = np.ones((attention_mask.shape[0], 1), np.int64)
            attention_mask = np.concatenate([attention_mask, ones], axis=1)  # [B, T + 1]
        position_ids = hf_position_ids(attention_mask, past_len) if form != "gqa" else None
        logits, present = forward(input_ids, attention_mask, position_ids, past)
        steps.append(Step(input_ids, attention_mask, position_ids, past_len, logits, present))
        past, past_len = present, attention_mask.shape[1]
    return steps


def real_queries(step: Step) -> np.ndarray:
    """`[B, S]` bool: which new tokens are real (not padding)."""
    return step.attention_mask[:, step.past_len :] != 0


def real_cache_entries(step: Step, form: str) -> np.ndarray:
    """`[B, T]` bool: which present rows hold a real token's KV (by mask column in forms A/C, compact in form B)."""
    mask = step.attention_mask
    if form != "gqa":
        return mask != 0
    return np.arange(mask.shape[1])[None, :] < mask.sum(axis=1, keepdims=True)


def steps_max_diff(actual: list[Step], expected: list[Step], form: str, *, real_only: bool) -> tuple[float, float]:
    """Max |actual - expected| over all steps: (logits, present). real_only skips padding rows/entries."""
    logits_diff = present_diff = 0.0
    for a, e in zip(actual, expected, strict=True):
        diff = np.abs(a.logits.astype(np.float32) - e.logits)  # [B, S, V]
        logits_diff = max(logits_diff, float((diff[real_queries(e)] if real_only else diff).max()))
        for a_kv, e_kv in zip(a.present, e.present, strict=True):
            for a_x, e_x in zip(a_kv, e_kv):
                diff = np.abs(a_x.astype(np.float32) - e_x).transpose(0, 2, 1, 3)  # [B, T, Hkv, Dh]
                diff = diff[real_cache_entries(e, form)] if real_only else diff
                present_diff = max(present_diff, float(diff.max()))
    return logits_diff, present_diff
