"""Whether the bench's steps fit a model, checked before anything runs: positions, pool, buckets.

    prefill   B sequences x N tokens                 (--batch, --prefill-len)
    decode    B sequences reaching C + K tokens      (--context, --decode-steps)

Limits: the positions the model encodes (its rotary or position table), the
tokens one sequence may span (a static manifest's max_context, or the pool),
the pool's blocks for B sequences together, and for static artifacts a
bucket every step fits (prefill [B, N], the context prefill in chunks of the
longest prefill bucket, decode [B, 1] with the table of C + K tokens).
"""

from __future__ import annotations

import math

from pagedc.bench.kind import ModelKind
from pagedc.bench.sides import BenchOptions
from pagedc.errors import RequestError
from pagedc.manifest import Artifact
from pagedc.manifest import Bucket
from pagedc.runtime.sessions.buckets import BucketError, select_artifact


def check_fits(kind: ModelKind, options: BenchOptions) -> None:
    """Raise RequestError naming the limit, the model and the option to change when a step does not fit."""
    steps = []
    if options.prefill_len:
        steps.append((options.prefill_len, "the prefill reaches", "--prefill-len"))
    if options.decode_steps:
        steps.append((options.context + options.decode_steps, "--context plus --decode-steps reach",
                      "--context / --decode-steps"))
    for num_tokens, what, hint in steps:
        _check_tokens(kind, options.batch, num_tokens, what, hint)
    if kind.artifacts and kind.is_paged:
        _check_paged_buckets(kind, options)
    elif kind.artifacts:
        _check_standard_buckets(kind, options)


def context_chunk(kind: ModelKind, options: BenchOptions) -> int:
    """Tokens per step when prefilling the decode context: all at once, or the longest prefill bucket for B."""
    if not kind.artifacts:
        return options.context
    prefill = [a.bucket() for a in kind.artifacts if a.phase == "prefill"]
    lengths = [shape.seq_len for shape in prefill if shape.batch >= options.batch]
    if not lengths:
        raise RequestError(f"{kind.path}: no prefill bucket takes {options.batch} sequence(s) (buckets: "
                           f"{', '.join(kind.buckets)}); lower --batch or recompile with --batch {options.batch}")
    return min(max(lengths), options.context)


def _check_tokens(kind: ModelKind, batch: int, num_tokens: int, what: str, hint: str) -> None:
    where = f"{kind.path}: {what} {num_tokens} tokens per sequence"
    if kind.max_positions is not None and num_tokens > kind.max_positions:
        raise RequestError(f"{where}; the model encodes {kind.max_positions} positions (its position table); "
                           f"lower {hint}")
    manifest = kind.manifest
    if manifest is None:
        return
    if not kind.is_paged:
        limit = int(manifest.standard["max_context"])
        if num_tokens > limit:
            raise RequestError(f"{where}; the standard artifacts hold {limit} (--max-context of the compile); "
                               f"lower {hint}")
        return
    units = (manifest.num_blocks - 1) // (2 if manifest.layout == "combined" else 1)
    per_sequence = manifest.max_context or units * manifest.block_size
    if num_tokens > per_sequence:
        raise RequestError(f"{where}; one sequence may span {per_sequence} tokens "
                           f"({'max_context' if manifest.max_context else 'the whole pool'}); "
                           f"lower {hint}")
    needed = batch * math.ceil(num_tokens / manifest.block_size)
    if needed > units:
        raise RequestError(f"{where}; {batch} sequence(s) need {needed} blocks of {manifest.block_size} tokens, the "
                           f"pool has {units} ({manifest.num_blocks} blocks, block 0 is the null block); lower --batch "
                           f"/ {hint} or recompile with a larger --num-blocks / --kv-memory")


def _check_paged_buckets(kind: ModelKind, options: BenchOptions) -> None:
    block_size = kind.manifest.block_size
    shapes = []
    if options.prefill_len:
        shapes.append(("prefill", Bucket("prefill", options.batch, options.prefill_len,
                                         math.ceil(options.prefill_len / block_size))))
    if options.decode_steps:
        chunk = context_chunk(kind, options)
        total = options.context + options.decode_steps
        shapes += [("context prefill", Bucket("prefill", options.batch, chunk, math.ceil(options.context / block_size))),
                   ("decode", Bucket("decode", options.batch, 1, math.ceil(total / block_size)))]
    for what, shape in shapes:
        try:
            select_artifact(kind.artifacts, shape)
        except BucketError as err:
            raise RequestError(f"{kind.path}: the {what} step {shape.shape_text()} fits no compiled bucket; {err}") from None


def _check_standard_buckets(kind: ModelKind, options: BenchOptions) -> None:
    steps = []
    if options.prefill_len:
        steps.append(("prefill", options.prefill_len, "--prefill-len"))
    if options.decode_steps:
        steps += [("prefill", options.context, "--context"), ("decode", 1, "--batch")]
    for phase, seq_len, option in steps:
        if not _standard_fits(kind.artifacts, phase, options.batch, seq_len):
            raise RequestError(f"{kind.path}: no standard {phase} bucket takes [B={options.batch}, S={seq_len}] "
                               f"(buckets: {', '.join(kind.buckets)}); lower {option} or recompile with "
                               "--batch / --prefill-len covering it")


def _standard_fits(artifacts: tuple[Artifact, ...], phase: str, batch: int, seq_len: int) -> bool:
    return any(a.phase == phase and Bucket(phase, batch, seq_len).fits(a.bucket()) for a in artifacts)
