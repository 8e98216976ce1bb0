"""What a request must be before the engine queues it, and the longest sequence the engine runs.

Policy (vLLM's, with max_model_len): `max_model_len` is the fewest of
- the positions the model embeds (manifest `max_position`: rotary or
  position-embedding rows),
- the tokens a static bucket spans (manifest `max_context`, MIGraphX),
- the tokens one sequence can hold in the pool (all usable blocks);
a prompt longer than max_model_len is refused with a RequestError naming the
limit; a sequence that reaches max_model_len tokens (prompt + output) is
finished with finish reason "length", like one that reaches max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedc.errors import RequestError
from pagedc.runtime.checks import require_int, token_ids
from pagedc.runtime.sampling import SamplingParams


def max_model_len(manifest, max_pool_tokens: int) -> tuple[int, str]:
    """(tokens one sequence may span, what sets that limit, for messages)."""
    limits = [(max_pool_tokens, f"the pool holds {max_pool_tokens} tokens for one sequence "
                                "(compile with a larger --kv-memory or --num-blocks)")]
    if manifest.max_position:
        limits.append((manifest.max_position, f"the model embeds positions 0..{manifest.max_position - 1}"))
    if manifest.max_context:
        limits.append((manifest.max_context, f"the compiled buckets span {manifest.max_context} tokens "
                                             "(recompile with a larger --max-context)"))
    return min(limits, key=lambda pair: pair[0])


def check_request(prompt, max_new_tokens, n, sampling, stop_token_ids, cache_key, *, vocab_size: int | None,
                  limit: tuple[int, str], name: str = "prompt") -> list[int]:
    """The prompt as a list of ints, or RequestError saying which argument is wrong and how."""
    ids = token_ids(name, prompt, vocab_size)
    if not ids:
        raise RequestError(f"{name} is empty; give at least one token id")
    require_int("max_new_tokens", max_new_tokens, minimum=1)
    require_int("n", n, minimum=1)
    if not isinstance(sampling, SamplingParams):
        raise RequestError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
    if not isinstance(stop_token_ids, (Sequence, set, frozenset)) or isinstance(stop_token_ids, str):
        raise RequestError(f"stop_token_ids must be a list of int token ids, got {type(stop_token_ids).__name__}")
    token_ids("stop_token_ids", list(stop_token_ids))
    if not isinstance(cache_key, str):
        raise RequestError(f"cache_key must be a string, got {type(cache_key).__name__}")
    tokens, why = limit
    if len(ids) > tokens:
        raise RequestError(f"{name} has {len(ids)} tokens, more than the {tokens} this engine runs per sequence: "
                           f"{why}. Shorten the prompt")
    return ids
