"""The steps `pagedc bench` times, one side per model: a paged session, a dense .onnx, or standard .mxr buckets.

Every side has the same five calls (feeds are built outside the timed calls):

    reset()         an empty cache                                            (untimed, each prefill round)
    prefill(i)      one [B, N] step on that cache                             (timed)
    setup_decode()  prefill the context of C tokens per sequence              (untimed, once)
    rewind()        back to the context of C tokens                           (untimed, each round)
    decode(i)       decode step i of a round: one token per sequence at C + i (timed)

Paged sides take their blocks from a PagedKVCacheManager whose free list is
shuffled (block tables are non-contiguous, as after some serving); the feeds
of every step are built once and replayed each round: a replayed step
rewrites the same slots, so the pool holds the context of C tokens again
and rewinding costs nothing. Dense sides restart from the past of C tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagedc.verify.dense_runner import DenseRunner
from pagedc.manifest import Manifest
from pagedc.runtime.block_manager import PagedKVCacheManager
from pagedc.runtime.feeds import step_feeds
from pagedc.runtime.sessions.standard_cache import StandardKVCache


@dataclass(frozen=True)
class BenchOptions:
    prefill_len: int = 128      # N: tokens per sequence of the timed prefill (0: no prefill phase)
    batch: int = 1              # B: sequences per step
    decode_steps: int = 32      # K: timed decode steps per round (0: no decode phase)
    context: int = 128          # C: tokens per sequence in the cache before the decode steps
    repeats: int = 10           # timed rounds
    warmup: int = 2             # untimed rounds first
    threads: int = 0            # ONNX Runtime intra-op threads (0: its default)
    seed: int = 0               # tokens and the block shuffle


class PagedSide:
    """A paged model: any session with run(feeds) -> logits (OrtPagedSession, BucketedPagedSession, ...)."""

    def __init__(self, manifest: Manifest, session, options: BenchOptions, context_chunk: int):
        self.manifest, self.session, self.options = manifest, session, options
        self.context_chunk = context_chunk          # longest prefill step the session takes
        self.rng = np.random.default_rng(options.seed)
        self._prefill = self._steps_on_a_new_cache([options.prefill_len])[0] if options.prefill_len else None
        self._decode: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        """Nothing to do: the prefill's context_lens make the cache empty to it."""

    def prefill(self, _: int) -> None:
        self.session.run(self._prefill)

    def setup_decode(self) -> None:
        opts = self.options
        chunks = [min(self.context_chunk, opts.context - start) for start in range(0, opts.context, self.context_chunk)]
        steps = self._steps_on_a_new_cache(chunks + [1] * opts.decode_steps)
        for feeds in steps[: len(chunks)]:
            self.session.run(feeds)
        self._decode = steps[len(chunks):]

    def rewind(self) -> None:
        """Nothing to do: replaying the decode feeds rewrites the same slots."""

    def decode(self, step: int) -> None:
        self.session.run(self._decode[step])

    def _steps_on_a_new_cache(self, lengths: list[int]) -> list[dict[str, np.ndarray]]:
        """Feeds of consecutive steps of B sequences, `lengths[i]` new tokens each, on shuffled blocks."""
        manifest, batch = self.manifest, self.options.batch
        manager = PagedKVCacheManager(manifest.num_blocks, manifest.block_size, manifest.layout,
                                      enable_prefix_caching=False)
        manager.shuffle_free_blocks(self.options.seed)
        for seq in range(batch):
            manager.add(seq)
        steps = []
        for length in lengths:
            tokens = _tokens(self.rng, (batch, length), manifest.vocab_size)            # [B, length]
            seq_steps = [manager.append(seq, length, tokens[seq].tolist()) for seq in range(batch)]
            steps.append(step_feeds(seq_steps, manifest.block_size, layout=manifest.layout))
        return steps


class DenseSide:
    """A dense-cache .onnx on ONNX Runtime: past K/V fed in, present taken back, as a dense loop does."""

    def __init__(self, runner: DenseRunner, options: BenchOptions, vocab_size: int | None):
        self.runner, self.options, self.vocab_size = runner, options, vocab_size
        self.rng = np.random.default_rng(options.seed)
        self.output_names = ["logits"] + [present for _, present in runner.kv]
        if options.prefill_len:
            self._prefill = self._feeds(_tokens(self.rng, (options.batch, options.prefill_len), vocab_size), 0,
                                        self._empty_past())
        self._context_past: dict[str, np.ndarray] = {}
        self._past: dict[str, np.ndarray] = {}
        self._decode_tokens = _tokens(self.rng, (options.decode_steps, options.batch, 1), vocab_size)

    def reset(self) -> None:
        """Nothing to do: the prefill feeds an empty past."""

    def prefill(self, _: int) -> None:
        self._run(self._prefill)

    def setup_decode(self) -> None:
        context = _tokens(self.rng, (self.options.batch, self.options.context), self.vocab_size)
        self._context_past = self._run(self._feeds(context, 0, self._empty_past()))

    def rewind(self) -> None:
        self._past = self._context_past

    def decode(self, step: int) -> None:
        self._past = self._run(self._feeds(self._decode_tokens[step], self.options.context + step, self._past))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, *presents = self.runner.session.run(self.output_names, feeds)
        return {past: present for (past, _), present in zip(self.runner.kv, presents)}

    def _empty_past(self) -> dict[str, np.ndarray]:
        heads, head_dim = self.runner.kv_shape
        empty = np.zeros((self.options.batch, heads, 0, head_dim), self.runner.dtype)   # [B, Hkv, 0, Dh]
        return {past: empty for past, _ in self.runner.kv}

    def _feeds(self, input_ids: np.ndarray, start: int, past: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch, seq_len = input_ids.shape
        feeds = {"input_ids": input_ids, **past}
        if "attention_mask" in self.runner.inputs:
            feeds["attention_mask"] = np.ones((batch, start + seq_len), np.int64)       # [B, past + S]
        if "position_ids" in self.runner.inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(start, start + seq_len), (batch, seq_len)).copy()
        return feeds


class StaticStandardSide:
    """The standard artifacts of `--emit-standard` (static KV buffers), given a run function per artifact path."""

    def __init__(self, manifest: Manifest, runners: dict, options: BenchOptions):
        self.manifest, self.runners, self.options = manifest, runners, options
        self.rng = np.random.default_rng(options.seed)
        vocab = manifest.vocab_size
        self._prefill_tokens = _tokens(self.rng, (options.batch, options.prefill_len), vocab).tolist()
        self._decode_tokens = _tokens(self.rng, (options.decode_steps, options.batch, 1), vocab).tolist()
        self.cache = StandardKVCache(manifest, options.batch)
        self._snapshot: tuple[dict, np.ndarray] | None = None

    def reset(self) -> None:
        self.cache = StandardKVCache(self.manifest, self.options.batch)

    def prefill(self, _: int) -> None:
        self._step(self._prefill_tokens)

    def setup_decode(self) -> None:
        self.cache = StandardKVCache(self.manifest, self.options.batch)
        self._step(_tokens(self.rng, (self.options.batch, self.options.context), self.manifest.vocab_size).tolist())
        self._snapshot = ({k: v.copy() for k, v in self.cache.buffers.items()}, self.cache.num_tokens.copy())

    def rewind(self) -> None:
        buffers, num_tokens = self._snapshot
        self.cache.buffers = {k: v.copy() for k, v in buffers.items()}
        self.cache.num_tokens = num_tokens.copy()

    def decode(self, step: int) -> None:
        self._step(self._decode_tokens[step])

    def _step(self, tokens: list[list[int]]) -> None:
        artifact, feeds = self.cache.feeds(tokens)
        outputs = dict(zip(artifact.outputs, self.runners[artifact.path](feeds)))
        self.cache.update(artifact, outputs)


def _tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab_size: int | None) -> np.ndarray:
    """Random token ids 1..vocab-1 (int64); all 1 when the vocabulary size is unknown."""
    if not vocab_size or vocab_size < 3:
        return np.ones(shape, np.int64)
    return rng.integers(1, vocab_size, shape).astype(np.int64)
