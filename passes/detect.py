"""Find every attention layer that has a dense KV cache (the paged pass's front end).

A site is anchored on a layer's past-KV graph inputs and followed to its
attention computation; names of values and weights are never trusted.

Source forms (DESIGN.md §2), H = num_heads, Hkv = num_kv_heads, Dh = head_dim,
B = batch, S = new tokens, P = past tokens, T = P + S:

    A decomposed   past_key [B,Hkv,P,Dh] ─Concat(axis=-2)─▶ present_key [B,Hkv,T,Dh]
                   q [B,H,S,Dh] ·(repeat-kv, Kᵀ)─MatMul─▶ scale ─Add(mask)─▶ Softmax ─MatMul(·V)─▶
    B gqa          com.microsoft.GroupQueryAttention(q, k, v, past_key, past_value, seqlens_k, ...)
    C attention    ai.onnx Attention (opset 23/24) with past_key / past_value inputs
    D mha          com.microsoft.MultiHeadAttention with past_key / past_value inputs

`find_attention_sites` returns one `AttentionSite` per layer and one `Miss` per
KV input it could not place; callers decide whether a miss is fatal (the pass
and `pagedc inspect` both treat it so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx_ir as ir

from pagedc.passes import graph_walk as gw
from pagedc.passes import detect_decomposed, detect_fused
from pagedc.passes.site import AttentionSite, Miss

__all__ = ["AttentionSite", "Miss", "Detection", "find_attention_sites"]


@dataclass
class Detection:
    """What detection found: the sites in layer order and what it could not place."""

    sites: list[AttentionSite] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)
    found_instead: dict[str, int] = field(default_factory=dict)  # op counts, for "no KV attention" errors
    prefill_only: str | None = None  # why this looks like a prefill graph (writes a KV cache, reads none)


def find_attention_sites(model: ir.Model) -> Detection:
    graph = model.graph
    sites: list[AttentionSite] = []
    misses: list[Miss] = []
    claimed: set[str] = set()
    for finder in (detect_fused.find_fused_sites, detect_decomposed.find_decomposed_sites):
        found, missed = finder(graph, claimed)
        sites += found
        misses += missed
        for site in found:
            claimed.update({site.past_key, site.past_value})
    misses += _unplaced_kv_inputs(graph, claimed, {m.value for m in misses})
    _number_layers(sites)
    return Detection(sites=sites, misses=misses, found_instead=_op_counts(graph),
                     prefill_only=None if sites else _prefill_only(graph))


_KV_NAME = re.compile(r"(past|present|cache|kv)", re.IGNORECASE)


def _unplaced_kv_inputs(graph: ir.Graph, claimed: set[str], reported: set[str]) -> list[Miss]:
    """Graph inputs that look like a dense KV cache but belong to no site."""
    misses = []
    for value in graph.inputs:
        if value.name in claimed or value.name in reported:
            continue
        if _is_kv_like(value):
            users = ", ".join(f"{n.op_type} '{n.name}'" for n in gw.consumers(value)) or "nothing"
            misses.append(Miss(value.name, f"looks like a KV-cache input but feeds {users}, not a known attention pattern"))
    return misses


def _prefill_only(graph: ir.Graph) -> str | None:
    """A graph with KV-cache outputs and no KV-cache input is a prefill-only export (it cannot read a cache)."""
    outputs = [v.name for v in graph.outputs if _is_kv_like(v)]
    if not outputs or any(_is_kv_like(v) for v in graph.inputs):
        return None
    return (f"it writes a KV cache ({', '.join(outputs[:2])}, ...) but reads none: a prefill-only graph. "
            "Compile the graph that takes the past KV as inputs instead: transformers' OnnxExporter writes "
            "decode.onnx next to prefill.onnx (export_for_generation(..., multi_token_decode=True) makes it "
            "serve prefill from an empty cache too)")


def _is_kv_like(value: ir.Value) -> bool:
    is_rank4 = value.shape is not None and len(value.shape) == 4
    return bool(is_rank4 and _KV_NAME.search(value.name or "") and value.dtype and value.dtype.is_floating_point())


def _number_layers(sites: list[AttentionSite]) -> None:
    """Layer index = the number in the past-key name when every site has a distinct one, else graph order."""
    numbers = [_layer_number(site.past_key) for site in sites]
    if None not in numbers and len(set(numbers)) == len(numbers):
        order = sorted(range(len(sites)), key=lambda i: numbers[i])
        for i in order:
            sites[i].layer = numbers[i]
    else:
        order = sorted(range(len(sites)), key=lambda i: sites[i].graph_position)
        for layer, i in enumerate(order):
            sites[i].layer = layer
    sites.sort(key=lambda site: site.layer)


def _layer_number(name: str) -> int | None:
    numbers = re.findall(r"\d+", name)
    return int(numbers[0]) if len(numbers) == 1 else None


def _op_counts(graph: ir.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.all_nodes():
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts
