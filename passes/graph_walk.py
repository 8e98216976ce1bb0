"""Small read-only walks over an onnx_ir graph, used by attention-site detection.

Detection matches structure, not names: it starts at a dense-KV graph input and
walks consumers or producers through ops that only move data around (Reshape,
Transpose, repeat-kv's Unsqueeze/Expand, casts, the attention scale) until it
reaches the op that does the work (MatMul, Softmax, an attention op).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import onnx_ir as ir

# Ops between a KV tensor and the MatMul that consumes it in exported decoders:
# repeat-kv (Unsqueeze -> Expand -> Reshape, or Tile), Kᵀ (Transpose, or
# dynamo's Reshape -> Transpose -> Reshape), casts, and a scale split over Q and Kᵀ.
LAYOUT_OPS = frozenset(
    {"Unsqueeze", "Squeeze", "Expand", "Reshape", "Transpose", "Tile", "Cast", "Identity", "Mul", "Div"}
)

# Ops between the QKᵀ MatMul and Softmax: scale, mask add, NaN/-inf guards, casts.
SCORE_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Where", "Cast", "Identity", "Slice", "Max", "Min"})

# Ops between Softmax and the probs·V MatMul: casts, fully-masked-row guards, dropout.
PROBS_OPS = frozenset({"Cast", "Where", "Identity", "Dropout", "Mul", "Slice"})


def consumers(value: ir.Value) -> list[ir.Node]:
    return [node for node, _ in value.uses()]


def walk_down(start: ir.Value, targets: set[str], through: Iterable[str], max_depth: int = 8) -> list[ir.Node]:
    """Target-op nodes reachable from `start` through `through` ops only (breadth first)."""
    through = frozenset(through)
    found: list[ir.Node] = []
    seen: set[int] = set()
    queue = deque([(start, 0)])
    while queue:
        value, depth = queue.popleft()
        for node in consumers(value):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in targets:
                found.append(node)
            elif node.op_type in through and depth < max_depth:
                queue.extend((out, depth + 1) for out in node.outputs)
    return found


def walk_up(start: ir.Value, targets: set[str], through: Iterable[str], max_depth: int = 8) -> list[ir.Node]:
    """Target-op nodes that produce `start` through `through` ops only (breadth first)."""
    through = frozenset(through)
    found: list[ir.Node] = []
    seen: set[int] = set()
    queue = deque([(start, 0)])
    while queue:
        value, depth = queue.popleft()
        node = value.producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in targets:
            found.append(node)
        elif node.op_type in through and depth < max_depth:
            queue.extend((inp, depth + 1) for inp in node.inputs if inp is not None)
    return found


def ancestors(value: ir.Value, max_nodes: int = 5000,
              is_boundary: Callable[[ir.Node], bool] | None = None) -> list[ir.Node]:
    """Nodes `value` depends on (bounded), nearest first; the walk does not go past boundary nodes."""
    result: list[ir.Node] = []
    seen: set[int] = set()
    queue = deque([value])
    while queue and len(result) < max_nodes:
        node = queue.popleft().producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        result.append(node)
        if is_boundary is None or not is_boundary(node):
            queue.extend(inp for inp in node.inputs if inp is not None)
    return result


def attr(node: ir.Node, name: str, default=None):
    """The value of a node attribute (int, float, ints, ...), or `default` when the node does not set it."""
    attribute = node.attributes.get(name)
    return attribute.value if attribute is not None else default


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """node.inputs[index], or None when the node leaves that optional input out."""
    return node.inputs[index] if index < len(node.inputs) else None


def unsupported_input(node: ir.Node, names: dict[int, str]) -> str | None:
    """"<op> with <name> is not supported" for the first optional input (index -> name) the node is given."""
    for index, name in names.items():
        if input_at(node, index) is not None:
            return f"{node.op_type} with {name} is not supported"
    return None


def const_ints(value: ir.Value | None) -> list[int] | None:
    """The contents of a small integer constant (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.size > 64 or not tensor.dtype.is_integer():
        return None
    return [int(x) for x in tensor.numpy().reshape(-1)]


def static_dim(value: ir.Value, axis: int) -> int | None:
    """The size of one axis: a dim_value, or a dim_param that is a numeral ("2"), else None."""
    shape = value.shape
    if shape is None or len(shape) <= abs(axis) - (1 if axis < 0 else 0):
        return None
    return dim_size(shape[axis])


def dim_size(dim) -> int | None:
    """int of a static dim. NOTE: transformers' OnnxExporter writes static KV heads and head dims as
    dim_param strings that are numerals (['s10', '2', 's54', '32']); they mean that number."""
    if isinstance(dim, int):
        return dim
    name = getattr(dim, "value", None)
    return int(name) if isinstance(name, str) and name.isdecimal() else None
