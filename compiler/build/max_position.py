"""The largest position a model can embed: what the manifest records as `max_position`.

A position p >= the model's table rows does not fail cleanly: ONNX Runtime's
Gather reports `idx=256 must be within the inclusive range [-256,255]` from
deep inside the rotary embedding. The engine stops a sequence before that
(finish reason `length`, as vLLM does at max_model_len), so compile records
the limit, read off the paged graph:

- tables indexed by position: Gather(table [max_pos, ...] constant, indices
  from `position_ids` through Cast/Reshape/Unsqueeze/...): rotary cos/sin
  caches (HF Llama TorchScript exports, the paged GQA rewrite) and learned
  position embeddings (GPT-2's wpe);
- com.microsoft GroupQueryAttention / RotaryEmbedding: rows of cos_cache;
- else the source's config: `max_position_embeddings` in config.json, or
  `context_length` in genai_config.json, next to the source model.

Models whose rotary is computed from inv_freq on the fly (Optimum exports of
Llama) have no table; without a config the limit is unknown (None) and only
the pool bounds a sequence.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import onnx_ir as ir

POSITION_INPUT = "position_ids"
# Ops that pass position values through unchanged (only their shape or dtype changes).
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
# com.microsoft op -> index of its cos_cache input ([max_pos, Dh/2])
_COS_CACHE_INPUT = {"GroupQueryAttention": 7, "RotaryEmbedding": 2}


def max_position(model: ir.Model, source: Path) -> int | None:
    """Positions the model can embed (positions 0 .. n-1 are valid), or None when nothing bounds them."""
    limits = _position_tables(model.graph) + _cos_caches(model.graph)
    if limits:
        return min(limits)
    return _from_config(Path(source).parent)


def _position_tables(graph: ir.Graph) -> list[int]:
    start = next((v for v in graph.inputs if v.name == POSITION_INPUT), None)
    if start is None:
        return []
    reached, queue, rows = {id(start)}, deque([start]), []
    while queue:
        value = queue.popleft()
        for node, index in value.uses():
            if node.op_type == "Gather" and index == 1 and node.domain in ("", "ai.onnx"):
                rows += _table_rows(node)
            elif node.op_type in _PASS_THROUGH and index == 0:
                for out in node.outputs:
                    if id(out) not in reached:
                        reached.add(id(out))
                        queue.append(out)
    return rows


def _table_rows(gather: ir.Node) -> list[int]:
    table = gather.inputs[0]
    axis = gather.attributes.get_int("axis", 0)
    if table is None or table.const_value is None or table.shape is None or len(table.shape) < 2:
        return []
    dim = table.shape[axis]
    return [dim] if isinstance(dim, int) else []


def _cos_caches(graph: ir.Graph) -> list[int]:
    rows = []
    for node in graph.all_nodes():
        index = _COS_CACHE_INPUT.get(node.op_type) if node.domain == "com.microsoft" else None
        if index is not None and len(node.inputs) > index and node.inputs[index] is not None:
            shape = node.inputs[index].shape
            if shape is not None and len(shape) == 2 and isinstance(shape[0], int):
                rows.append(shape[0])
    return rows


def _from_config(directory: Path) -> int | None:
    """max_position_embeddings (HF config.json; GPT-2: n_positions), or genai_config.json's model.context_length."""
    for name, path in (("config.json", ("max_position_embeddings",)), ("config.json", ("n_positions",)),
                       ("genai_config.json", ("model", "context_length"))):
        try:
            value = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if type(value) is int and value > 0:
            return value
    return None
