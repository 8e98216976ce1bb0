"""What detection knows about one attention layer (the record the paged pass rewrites from)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

FORMS = ("decomposed", "gqa", "attention", "mha")


@dataclass
class AttentionSite:
    """One attention layer with a dense KV cache.

    `mask` is "causal", "sliding window N" or "other: <why>"; the paged pass
    rewrites causal and sliding-window sites. `rotary` says where rotary embedding happens
    ("none" when the model has none or uses learned positions).
    """

    layer: int
    form: str
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    rotary: str
    mask: str
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    graph_position: int = 0  # index of the anchoring node in graph order
    # The nodes the pass rewrites, by role ("key_concat", "softmax", "op", ...).
    nodes: dict[str, ir.Node] = field(default_factory=dict, repr=False, compare=False)
    # Values the pass rewires, by role ("mask": the mask operand of nodes["mask_add"]).
    values: dict[str, ir.Value] = field(default_factory=dict, repr=False, compare=False)

    @property
    def window(self) -> int | None:
        """N of a "sliding window N" mask (N keys including the query's own), else None."""
        prefix = "sliding window "
        return int(self.mask[len(prefix):]) if self.mask.startswith(prefix) else None

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "form": self.form,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rotary": self.rotary,
            "mask": self.mask,
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
