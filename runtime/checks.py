"""Argument checks for the Python API: a wrong type or value is a RequestError naming it, never a crash later.

    require_int("num_blocks", "8", minimum=2)   -> RequestError: num_blocks must be an int >= 2, got str '8'
    token_ids("prompt", [1, 2.5])               -> RequestError: prompt must hold int token ids; item 1 is float 2.5

NOTE: bools are ints in Python but never a count or a token id here, so they
are refused; NumPy integers (np.int64 from an array) are accepted.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from pagedc.errors import RequestError


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_int(name: str, value, minimum: int | None = None) -> int:
    """`value` as an int, or RequestError when it is not an integer or is below `minimum`."""
    bound = f" >= {minimum}" if minimum is not None else ""
    if not is_int(value):
        raise RequestError(f"{name} must be an int{bound}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise RequestError(f"{name} must be an int{bound}, got {value}")
    return int(value)


def require_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def token_ids(name: str, values, vocab_size: int | None = None) -> list[int]:
    """A list of token ids (ints in [0, vocab_size)), or RequestError saying which item is wrong."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__array__"):
        raise RequestError(f"{name} must be a list of int token ids, got {type(values).__name__} {values!r:.60}"
                           + ("; tokenize text first (pagedc generate --prompt does)" if isinstance(values, str) else ""))
    ids = list(values.tolist() if hasattr(values, "tolist") else values)
    for i, token in enumerate(ids):
        if not is_int(token):
            raise RequestError(f"{name} must hold int token ids; item {i} is {type(token).__name__} {token!r}")
    limit = vocab_size or 2**63
    bad = [int(t) for t in ids if not 0 <= t < limit]
    if bad:
        where = f"the vocabulary [0, {vocab_size})" if vocab_size else "[0, 2**63)"
        raise RequestError(f"{name} has token ids outside {where}: {bad[:5]}")
    return [int(t) for t in ids]


def prompts_list(prompts) -> list:
    """generate()/stream() take a list of prompts; a flat list of ints is a common slip."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise RequestError(f"prompts must be a list of prompts (lists of token ids), got {type(prompts).__name__}")
    if prompts and is_int(prompts[0]):
        raise RequestError("prompts must be a list of prompts, each a list of token ids; got a flat list of ints: "
                           f"wrap it, e.g. [{list(prompts)[:3]}]")
    return list(prompts)
