"""`keep_last_logits`: compute the lm_head for the last new token of each row only (as vLLM does).

Letters: B batch, S new tokens per row, D hidden size, V vocabulary.

    before:  x [B, S, D] ─MatMul(W [D, V])─▶ [B, S, V] ─(Add bias, Div/Tanh/Mul softcap, Cast)─▶ logits [B, S, V]
    after:   position_ids [B, S] ─ArgMax(axis=1, keepdims=1)─▶ last [B, 1] int64
             x ─GatherND(last, batch_dims=1)─▶ [B, D] ─Unsqueeze([1])─▶ [B, 1, D]
               ─MatMul(W)─▶ [B, 1, V] ─(the same ops)─▶ logits [B, 1, V]

The engine samples only from each row's last new token, so the other rows'
lm_head is wasted work: at a 2048-token prefill of a 200M-parameter Llama
with vocab 32003 it is ~16% of the FLOPs and a 262 MB logits tensor.

NOTE: the last real token of a row is the first maximum of its position_ids.
Under the paged ABI a row's new tokens have strictly increasing positions and
padding positions are 0 (pagedc.runtime.feeds.step_feeds; the static buckets
pad with 0 too), and ArgMax returns the first maximum (select_last_index 0):
    positions [4, 5, 6, 0] -> 2      [7, 0, 0, 0] -> 0 (a one-token row: a decode, a last prompt chunk)
    [0, 0, 0, 0] (a padding row) -> 0, whose output is ignored.
A row's token count is not an input, and positions are, so this needs no new ABI input.

The lm_head is found by structure: from the graph output `logits` up through
Cast, Identity, Tanh and Add / Mul / Div by a per-vocabulary constant (a
scalar or [V]: softcap, bias) to a MatMul whose weight is a 2-D constant.
Each value on the way must feed only the next op. Anything else (a Gemm,
whose activations are 2-D [B·S, D]; a Reshape; an unknown op; a constant
that could differ per position) leaves the graph as it is, and the reason
says why logits stay per token: the pass never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from pagedc.passes.paged_builder import PagedBuilder

LOGITS_OUTPUT = "logits"
UNARY_OPS = frozenset({"Cast", "Identity", "Tanh"})
CONSTANT_OPERAND = {"Add": (0, 1), "Mul": (0, 1), "Div": (1,)}   # where the per-vocabulary constant may be
MAX_CHAIN = 8


@dataclass(frozen=True)
class LmHead:
    matmul: ir.Node                  # MatMul(x [B, S, D], W [D, V])
    chain: list[ir.Node] = field(default_factory=list)   # the ops from the MatMul's output to `logits`, in order


@dataclass(frozen=True)
class LogitsResult:
    """What the pass did: logits "last" ([B, 1, V]) or "all" ([B, S, V]) and, for "all", why."""

    logits: str
    reason: str = ""


def keep_last_logits(builder: PagedBuilder) -> LogitsResult:
    """Feed the lm_head only each row's last new token; "all" with the reason where it is not found."""
    head = find_lm_head(builder.graph)
    if isinstance(head, str):
        return LogitsResult("all", head)
    last = builder.op("ArgMax", builder.position_ids, axis=1, keepdims=1)              # [B, 1] int64
    x = head.matmul.inputs[0]
    rows = builder.op("GatherND", x, last, batch_dims=1)                                # [B, D]
    rows = builder.op("Unsqueeze", rows, builder.const([1]))                            # [B, 1, D]
    head.matmul.replace_input_with(0, rows)
    for node in [head.matmul, *head.chain]:
        out = node.outputs[0]
        if out.shape is not None and len(out.shape) == 3:
            out.shape = ir.Shape([out.shape[0], 1, out.shape[2]])
        elif not out.is_graph_output():
            out.shape = None
    return LogitsResult("last")


def find_lm_head(graph: ir.Graph) -> LmHead | str:
    """The lm_head MatMul and the per-vocabulary ops after it, or why it was not found with certainty."""
    logits = next((v for v in graph.outputs if v.name == LOGITS_OUTPUT), None)
    if logits is None:
        return f"the graph has no '{LOGITS_OUTPUT}' output"
    if list(logits.uses()):
        return f"'{LOGITS_OUTPUT}' is also read inside the graph (by {_users(logits)})"
    chain: list[ir.Node] = []
    value = logits
    for _ in range(MAX_CHAIN):
        node = value.producer()
        if node is None:
            return f"'{value.name}' is a graph input or constant, not computed by an lm_head MatMul"
        if node.domain not in ("", "ai.onnx"):
            return f"{node.domain}::{node.op_type} '{node.name}' before '{LOGITS_OUTPUT}' is not an op pagedc knows"
        if node.op_type == "Gemm":
            return (f"the lm_head is Gemm '{node.name}', whose activations are 2-D [B*S, hidden]: "
                    "the rows of a sequence cannot be told apart with certainty")
        if node.op_type == "MatMul":
            return _check_matmul(node, chain, logits)
        value = _chain_input(node)
        if isinstance(value, str):
            return value
        if value.is_graph_output() or len(list(value.uses())) != 1:
            return f"'{value.name}' (input of {node.op_type} '{node.name}') is also used elsewhere"
        chain.insert(0, node)
    return f"no MatMul within {MAX_CHAIN} ops above '{LOGITS_OUTPUT}'"


def _chain_input(node: ir.Node) -> ir.Value | str:
    """The activation input of an op that acts on each vocabulary entry alike, or why the op is not one."""
    if node.op_type in UNARY_OPS:
        return node.inputs[0]
    if node.op_type not in CONSTANT_OPERAND or len(node.inputs) != 2 or None in node.inputs:
        return (f"{node.op_type} '{node.name}' between the lm_head and '{LOGITS_OUTPUT}' is not an op pagedc knows "
                "to act on each token alike (Cast, Identity, Tanh, Add/Mul/Div by a constant)")
    for index in CONSTANT_OPERAND[node.op_type]:
        tensor = ir.convenience.get_const_tensor(node.inputs[index])
        if tensor is not None:
            if len(tensor.shape) > 1:
                return (f"{node.op_type} '{node.name}' takes a constant of shape {list(tensor.shape)}; only a "
                        "scalar or a [vocab] vector is certain to act on every token alike")
            return node.inputs[1 - index]
    return f"{node.op_type} '{node.name}' after the lm_head has no constant operand"


def _check_matmul(matmul: ir.Node, chain: list[ir.Node], logits: ir.Value) -> LmHead | str:
    x, weight = matmul.inputs
    is_constant = weight.is_initializer() or weight.const_value is not None
    if not is_constant or weight.shape is None or len(weight.shape) != 2:
        return (f"MatMul '{matmul.name}' before '{LOGITS_OUTPUT}' does not take a 2-D weight initializer as its "
                "second input")
    out = matmul.outputs[0]
    if out is not logits and (out.is_graph_output() or len(list(out.uses())) != 1):
        return f"the output of MatMul '{matmul.name}' is also used elsewhere"
    # NOTE: W is 2-D and the chain's constants are scalars or [V], so x has the rank of `logits`.
    shape = x.shape if x.shape is not None else logits.shape
    if shape is None:
        return (f"the rank of MatMul '{matmul.name}''s activations is unknown (no shapes on them or on "
                f"'{LOGITS_OUTPUT}')")
    if len(shape) != 3:
        return (f"MatMul '{matmul.name}''s activations are rank {len(shape)}, not [B, S, hidden]: the rows of a "
                "sequence cannot be told apart with certainty")
    return LmHead(matmul, chain)


def _users(value: ir.Value) -> str:
    return ", ".join(f"{node.op_type} '{node.name}'" for node, _ in value.uses())
