"""What detection knows about one attention layer (the record the paged pass rewrites from).

    AttentionSite      one layer: form, heads, dims, rotary, its Mask, the KV names, its nodes
    Mask               kind "causal" | "sliding_window" (window N) | "other" (reason)
    DecomposedNodes    form A: the Concats, both MatMuls, the mask Add/Where and its mask operand
    FusedNodes         forms B, C, D: the one attention op
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

FORMS = ("decomposed", "gqa", "attention", "mha")
MASK_KINDS = ("causal", "sliding_window", "other")


@dataclass(frozen=True)
class Mask:
    """What a layer's mask is; the paged pass rewrites "causal" and "sliding_window" sites.

    `window` is N of a sliding window (N keys including the query's own); `reason` says why
    an "other" mask is not one the paged mask can replace. str() gives the text `pagedc inspect` shows.
    """

    kind: str
    window: int | None = None
    reason: str = ""

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {self.kind!r}")
        if (self.kind == "sliding_window") != (self.window is not None):
            raise ValueError(f"a window goes with kind 'sliding_window' only, got {self.kind!r} and {self.window!r}")

    @classmethod
    def causal(cls) -> Mask:
        return cls("causal")

    @classmethod
    def sliding_window(cls, window: int) -> Mask:
        return cls("sliding_window", window=window)

    @classmethod
    def other(cls, reason: str) -> Mask:
        return cls("other", reason=reason)

    @property
    def is_pageable(self) -> bool:
        return self.kind != "other"

    def __str__(self) -> str:
        if self.kind == "sliding_window":
            return f"sliding window {self.window}"
        return f"other: {self.reason}" if self.kind == "other" else self.kind


@dataclass(frozen=True, eq=False)
class DecomposedNodes:
    """Form A's nodes the rewrite rewires (row_guard: mask_facts.row_guard, None when there is none)."""

    key_concat: ir.Node
    value_concat: ir.Node
    qk_matmul: ir.Node
    pv_matmul: ir.Node
    mask_add: ir.Node | None     # the Add (additive mask) or Where (boolean mask) between QKᵀ and Softmax
    mask_value: ir.Value | None  # its mask operand, which the paged mask replaces
    row_guard: ir.Node | None = None


@dataclass(frozen=True, eq=False)
class FusedNodes:
    """Forms B, C, D: the attention op the rewrite replaces."""

    op: ir.Node
    row_guard: ir.Node | None = None


@dataclass
class AttentionSite:
    """One attention layer with a dense KV cache.

    `rotary` says where rotary embedding happens ("none" when the model has none or uses
    learned positions); `nodes` is DecomposedNodes for form A, FusedNodes for the others.
    """

    layer: int
    form: str
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    rotary: str
    mask: Mask
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    nodes: DecomposedNodes | FusedNodes = field(repr=False, compare=False)
    graph_position: int = 0  # index of the anchoring node in graph order

    @property
    def window(self) -> int | None:
        """N of a sliding-window mask, else None."""
        return self.mask.window

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "form": self.form,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rotary": self.rotary,
            "mask": str(self.mask),
            "past_key": self.past_key,
            "past_value": self.past_value,
            "present_key": self.present_key,
            "present_value": self.present_value,
        }


@dataclass(frozen=True)
class Miss:
    """A KV input (or attention node) detection could not place, and why."""

    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.value}: {self.reason}"
