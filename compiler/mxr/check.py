"""`check_for_migraphx`: every node MIGraphX's ONNX parser would reject or make dynamic, and why.

Run on each lowered (static) bucket before MIGraphX sees it, so a compile fails
with one line per problem instead of a parser exception deep inside
`migraphx.parse_onnx`. The rules and their sources are in pagedc.mxr.ops:

- unsupported op: no parser registered for the op name ("Unknown operator");
- ONNX `Attention` (opset 23): the parser dispatches on the name only and would
  read it as com.microsoft.Attention;
- foreign domain: a supported name in another domain would be misread the same way;
- GroupQueryAttention: 7..11 inputs counted with empty ones (genai 0.18 emits 12),
  9 or more when do_rotary;
- literal inputs: Reshape shapes, Squeeze/Unsqueeze/Reduce axes, Range bounds,
  Expand shapes … are evaluated while parsing and must be constants;
- static inputs: a symbolic graph-input dim becomes a default (1) or a dynamic shape;
- dtypes: element types the parser cannot map (string, complex, most float8).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from pagedc.mxr.ops import (
    GQA_MAX_INPUTS,
    GQA_MIN_INPUTS,
    GQA_ROTARY_INPUTS,
    KNOWN_DOMAINS,
    LITERAL_INPUTS,
    SUPPORTED_ELEM_TYPES,
    SUPPORTED_OPS,
)


@dataclass(frozen=True)
class Problem:
    node: str      # node name, or the graph input / initializer name
    op: str        # op type ("domain::Op" outside ai.onnx), or "graph input" / "initializer"
    reason: str

    def __str__(self) -> str:
        return f"{self.op} '{self.node}': {self.reason}"


def check_for_migraphx(model: ir.Model) -> list[Problem]:
    """Problems MIGraphX's parser would have with `model`, graph inputs first, then nodes in order."""
    graph = model.graph
    problems = [p for value in graph.inputs if not value.is_initializer() for p in _check_graph_input(value)]
    problems += [Problem(name, "initializer", reason) for name, value in graph.initializers.items()
                 if (reason := _dtype_reason(value.dtype))]
    for node in ir.traversal.RecursiveGraphIterator(graph):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        problems += [Problem(node.name or "(unnamed)", op, reason) for rule in _NODE_RULES for reason in rule(node)]
    return problems


# -- graph inputs --------------------------------------------------------------------
def _check_graph_input(value: ir.Value) -> list[Problem]:
    problems = []
    if value.shape is None:
        problems.append(Problem(value.name, "graph input", "has no shape; MIGraphX needs every input's dims"))
    elif not value.shape.is_static():
        dims = [d if isinstance(d, int) else str(d) for d in value.shape]
        problems.append(Problem(value.name, "graph input", f"shape {dims} is not static: MIGraphX turns a symbolic "
                                "dim into a default (1) or a dynamic shape; lower to a static bucket first"))
    if reason := _dtype_reason(value.dtype):
        problems.append(Problem(value.name, "graph input", reason))
    return problems


# -- node rules: each yields the reasons it finds ------------------------------------
def _unsupported_op(node: ir.Node) -> Iterator[str]:
    if node.op_type not in SUPPORTED_OPS:
        yield (f"MIGraphX's ONNX parser has no parser for '{node.op_type}' (parsing stops with "
               f"'Unknown operator: {node.op_type}'); rewrite it into supported ops")


def _onnx_attention(node: ir.Node) -> Iterator[str]:
    if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
        yield ("ONNX opset-23 Attention: MIGraphX's parser dispatches on the op name only and would read it as "
               "com.microsoft.Attention (other inputs and semantics); decompose it into MatMul/Softmax first")


def _foreign_domain(node: ir.Node) -> Iterator[str]:
    if node.domain not in KNOWN_DOMAINS and node.op_type in SUPPORTED_OPS:
        yield (f"domain '{node.domain}' is ignored by MIGraphX's parser, which would parse this node as its own "
               f"'{node.op_type}'; inline or rename the custom op")


def _gqa_inputs(node: ir.Node) -> Iterator[str]:
    if node.op_type != "GroupQueryAttention":
        return
    count = len(node.inputs)
    trailing_empty = count - max((i + 1 for i, v in enumerate(node.inputs) if v is not None), default=0)
    if count > GQA_MAX_INPUTS:
        hint = "trim the trailing empty inputs" if count - trailing_empty <= GQA_MAX_INPUTS else "drop the extra inputs"
        yield (f"GroupQueryAttention has {count} inputs ({trailing_empty} trailing empty); MIGraphX's parser accepts "
               f"{GQA_MIN_INPUTS}..{GQA_MAX_INPUTS} ('Wrong number of inputs provided'): {hint}")
    elif count < GQA_MIN_INPUTS:
        yield f"GroupQueryAttention has {count} inputs; MIGraphX's parser needs at least {GQA_MIN_INPUTS}"
    do_rotary = node.attributes.get("do_rotary")
    if do_rotary is not None and do_rotary.as_int() and count < GQA_ROTARY_INPUTS:
        yield f"GroupQueryAttention with do_rotary=1 needs cos_cache and sin_cache (>= {GQA_ROTARY_INPUTS} inputs)"


def _literal_inputs(node: ir.Node) -> Iterator[str]:
    for index in LITERAL_INPUTS.get(node.op_type, ()):
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and not _is_literal(value):
            yield (f"input {index} ('{value.name}') is computed at run time; MIGraphX's parser evaluates it while "
                   "parsing and needs a constant (fold shapes first: lower to static shapes)")


def _dtypes(node: ir.Node) -> Iterator[str]:
    to = node.attributes.get("to") if node.op_type == "Cast" else None
    if to is not None and (reason := _dtype_reason(ir.DataType(to.as_int()))):
        yield f"casts to {reason}"
    for value in node.outputs:
        if reason := _dtype_reason(value.dtype):
            yield f"output '{value.name}' {reason}"


_NODE_RULES = (_unsupported_op, _onnx_attention, _foreign_domain, _gqa_inputs, _literal_inputs, _dtypes)


def _is_literal(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def _dtype_reason(dtype: ir.DataType | None) -> str | None:
    if dtype is None or int(dtype) in SUPPORTED_ELEM_TYPES:
        return None
    return f"element type {dtype.name} is not one MIGraphX's ONNX parser maps (onnx_parser.cpp get_type)"
