"""Runs a dense model one sequence at a time and its paged rewrite on ragged batches.

The dense side is the reference: each sequence alone, its cache fed back step by
step. The paged side gets explicit block lists (shuffled, shared, split K/V) so
tests control exactly where every token lands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pagedc.verify.dense_runner import DenseRunner  # noqa: F401  (re-exported for the tests)
from pagedc.runtime.feeds import SequenceStep, step_feeds


def session(path: str | Path, optimize: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class PagedRunner:
    """The paged model with its pools as NumPy arrays, updated from the outputs each step."""

    def __init__(self, path: str | Path, num_blocks: int, block_size: int, layout: str, optimize: bool = False):
        self.session = session(path, optimize)
        self.block_size, self.layout = block_size, layout
        self.pools: dict[str, np.ndarray] = {}
        for inp in self.session.get_inputs():
            if "_cache." in inp.name:
                dtype = np.float16 if "float16" in inp.type else np.float32
                self.pools[inp.name] = np.zeros((num_blocks, *inp.shape[1:]), dtype)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def step(self, tokens: list[list[int]], steps: list[SequenceStep], **pad) -> np.ndarray:
        """Run one step; tokens[b] are sequence b's new tokens. Returns logits [B, S, V]."""
        steps = [dataclasses.replace(step, token_ids=tuple(toks)) for step, toks in zip(steps, tokens)]
        feeds = step_feeds(steps, self.block_size, layout=self.layout, **pad)
        feed = {**{k: v for k, v in feeds.items() if k in self.input_names}, **self.pools}
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(None, feed)))
        for name in self.pools:
            self.pools[name] = outputs[name.replace("_cache.", "_cache_out.")]
        return outputs["logits"]


def shuffled_blocks(num_blocks: int, seed: int) -> list[int]:
    """Every usable block id (1..num_blocks-1) in a seeded random order: tables are non-contiguous."""
    return [int(b) for b in np.random.default_rng(seed).permutation(np.arange(1, num_blocks))]


def blocks_for(free: list[int], num_tokens: int, block_size: int) -> list[int]:
    """Take enough blocks off `free` for `num_tokens` tokens."""
    count = -(-num_tokens // block_size)
    taken, free[:] = free[:count], free[count:]
    return taken
