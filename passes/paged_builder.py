"""Builds the paged-attention pieces every rewritten layer shares (DESIGN.md §3).

Letters: B batch, S new tokens per sequence, N = B·S, H heads, Hkv KV heads,
G = H / Hkv, Dh head dim, MB max blocks per sequence, bs block_size,
T = MB·bs (context a sequence can see), NB num_blocks.

    slot_mapping [N] ─▶ write indices [B, Hkv, S, 3] (block, head, offset)       (once per graph)
    block_table [B,MB] ─▶ read indices [B, Hkv, MB, 2]: (block_table[b, m], h)   (once per graph)
    key_cache.{i} [NB,Hkv,bs,Dh] ─ScatterND(write indices, new_key [B,Hkv,S,Dh])─▶ key_cache_out.{i}
    key_cache_out.{i} ─GatherND(read indices)─▶ [B,Hkv,MB,bs,Dh] ─Reshape─▶ key [B,Hkv,T,Dh]
    position_ids, context_lens ─▶ mask [B,1,S,T]: key j visible iff j <= position and j < context_len
                                  (and position - window < j in a sliding-window layer)

Index tensors and masks are built once per graph and shared by every layer,
so a layer adds only its ScatterND and one GatherND per pool, and no
transpose of the context.

NOTE: reads copy whole (block, head) rows of bs·Dh contiguous values (4 KiB at
bs=16, Dh=64 fp32), not one Dh row per key position: the per-position
GatherND cost ~3.4x more per pool at context 1024 (ORT 1.32, CPU), and the
[B,Hkv,MB,bs,Dh] result is already [B,Hkv,T,Dh] in memory.

Worked example, block_size=4, block_table=[7, 2]: positions 0..3 live in slots
28..31 and positions 4..7 in slots 8..11; slot 9 = block 2, offset 1.

Combined layout: one pool per layer holds both K and V blocks; `block_table`
is [B, 2, MB] (row 0 K blocks, row 1 V blocks) and `slot_mapping` is [2, N]
(row 0 K slots, row 1 V slots), so K and V of one token may live in
different blocks. One ScatterND writes both (indices and updates stacked [2, ...]).

NOTE: every read of a pool consumes the ScatterND output and nothing else
reads the pool input: under ONNX Runtime IOBinding input and output share
one buffer, the scatter runs in place, and this ordering is what makes the
read see the write.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pagedc.passes import graph_walk as gw

INT32, INT64 = ir.DataType.INT32, ir.DataType.INT64


class PagedBuilder:
    """Adds the paged ABI inputs to a graph and builds per-layer pool writes, reads and masks."""

    def __init__(self, graph: ir.Graph, block_size: int, layout: str, position_ids: ir.Value | None,
                 fuse_rotary: bool = False):
        self.graph = graph
        self.fuse_rotary = fuse_rotary   # com.microsoft.RotaryEmbedding (ONNX Runtime) instead of plain ops
        self.opset = graph.opset_imports.get("", 1)
        self.tape = ir.tape.Tape(graph)
        self.block_size = block_size
        self.is_combined = layout == "combined"
        batch, seq = ir.SymbolicDim("batch_size"), ir.SymbolicDim("sequence_length")
        blocks = ir.SymbolicDim("max_blocks")
        tokens = ir.SymbolicDim("num_tokens")
        table_shape = [batch, 2, blocks] if self.is_combined else [batch, blocks]
        slot_shape = [2, tokens] if self.is_combined else [tokens]
        self.block_table = self._input("block_table", INT32, table_shape)
        self.slot_mapping = self._input("slot_mapping", INT32, slot_shape)
        self.context_lens = self._input("context_lens", INT32, [batch])
        self.position_ids = position_ids or self._input("position_ids", INT64, [batch, seq])
        self.added_position_ids = position_ids is None
        self._cache: dict[tuple, ir.Value] = {}
        self._num_consts = 0
        self.rule_counts: dict[str, int] = {}   # rewrite rule -> layers it was applied to

    # -- small helpers -------------------------------------------------------------
    def _input(self, name: str, dtype: ir.DataType, dims: list) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))
        self.graph.inputs.append(value)
        return value

    def count(self, rule: str) -> None:
        self.rule_counts[rule] = self.rule_counts.get(rule, 0) + 1

    def const(self, array, dtype=np.int64) -> ir.Value:
        self._num_consts += 1
        tensor = ir.tensor(np.asarray(array, dtype=dtype), name=f"paged_const_{self._num_consts}")
        return self.tape.initializer(tensor)

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes=attributes or None)

    def pool_input(self, name: str, num_blocks: int | str, num_kv_heads: int, head_dim: int, dtype) -> ir.Value:
        dims = [ir.SymbolicDim("num_blocks") if isinstance(num_blocks, str) else num_blocks,
                num_kv_heads, self.block_size, head_dim]
        return self._input(name, dtype, dims)

    # -- shared per graph ----------------------------------------------------------
    def write_indices(self, num_kv_heads: int, tokens_first: bool) -> ir.Value:
        """(block, head, offset) int64 indices of each new token's K/V rows.

        [B, Hkv, S, 3] for new K/V laid out [B, Hkv, S, Dh] (form A), [B, S, Hkv, 3] for
        [B, S, Hkv, Dh] (tokens_first, form B); combined layout: [2, ...] with K first.
        ScatterND then takes the new K/V as they are, with no transpose.
        """
        key = ("write", num_kv_heads, tokens_first)
        if key not in self._cache:
            rows = [2] if self.is_combined else []
            batch_seq = self.op("Shape", self.position_ids)                                   # [B, S]
            slots = self.op("Reshape", self.slot_mapping, self.op("Concat", self.const(rows or [1]), batch_seq, axis=0))
            slots = self.op("Unsqueeze", self.op("Cast", slots, to=INT64), self.const([-1]))  # [R, B, S, 1]
            head_axis = -2 if tokens_first else -3
            slots = self.op("Unsqueeze", slots, self.const([head_axis]))                      # [R, B, 1, S, 1] | [R, B, S, 1, 1]
            heads = np.arange(num_kv_heads).reshape((num_kv_heads, 1) if tokens_first else (num_kv_heads, 1, 1))
            indices = self._index_tuples(self.op("Div", slots, self.const(self.block_size)), heads,
                                          self.op("Mod", slots, self.const(self.block_size)))
            if not self.is_combined:
                indices = self.op("Squeeze", indices, self.const([0]))
            self._cache[key] = indices
        return self._cache[key]

    def read_indices(self, row: int, num_kv_heads: int) -> ir.Value:
        """[B, Hkv, MB, 2] int64 (block, head) pairs: the bs·Dh rows of each sequence's blocks, per KV head."""
        key = ("read", row, num_kv_heads)
        if key not in self._cache:
            blocks = self.op("Unsqueeze", self.op("Cast", self.block_ids(row), to=INT64), self.const([1, 3]))  # [B, 1, MB, 1]
            self._cache[key] = self._index_tuples(blocks, np.arange(num_kv_heads).reshape(num_kv_heads, 1, 1))
        return self._cache[key]

    def _index_tuples(self, blocks: ir.Value, heads: np.ndarray, offsets: ir.Value | None = None) -> ir.Value:
        """Broadcast block ids, head ids (and offsets) to one shape and stack them on a new last axis."""
        zeros = self.const(np.zeros_like(heads))
        blocks = self.op("Add", blocks, zeros)                                   # block id for every head
        like = self.op("Mul", blocks, self.const(0))
        parts = [blocks, self.op("Add", like, self.const(heads))]
        if offsets is not None:
            parts.append(self.op("Add", like, offsets))
        return self.op("Concat", *parts, axis=-1)

    def context_width(self) -> ir.Value:
        """T = max_blocks · block_size as a scalar."""
        if "width" not in self._cache:
            num_blocks = self.op("Shape", self.block_ids(0), start=1, end=2)
            self._cache["width"] = self.op("Squeeze", self.op("Mul", num_blocks, self.const([self.block_size])),
                                           self.const([0]))
        return self._cache["width"]

    def past_shape(self, num_kv_heads: int, head_dim: int) -> ir.Value:
        """[B, Hkv, T - S, Dh] int64: the shape a dense past would have if the context were T tokens."""
        key = ("past_shape", num_kv_heads, head_dim)
        if key not in self._cache:
            batch_seq = self.op("Shape", self.position_ids)                              # [B, S]
            past_len = self.op("Sub", self.op("Unsqueeze", self.context_width(), self.const([0])),
                               self.op("Slice", batch_seq, self.const([1]), self.const([2])))
            self._cache[key] = self.op("Concat", self.op("Slice", batch_seq, self.const([0]), self.const([1])),
                                       self.const([num_kv_heads]), past_len, self.const([head_dim]), axis=0)
        return self._cache[key]

    def replace_past_shapes(self, past: ir.Value, num_kv_heads: int, head_dim: int) -> None:
        """Shape(past) -> past_shape(): a virtual past of T - S tokens, so the total length a model computes is T.

        NOTE: built from the step inputs, not from a layer's gathered K: exports (torch.onnx dynamo) read one
        layer's past shape for the whole model's mask and reshapes, and transformers' exports with ORT's
        GroupQueryAttention size seqlens_k and the rotary caches from it; a dependence on a later layer's K
        would be a cycle.
        """
        for node, _ in list(past.uses()):
            if node.op_type != "Shape":
                continue
            start, end = gw.attr(node, "start", 0), gw.attr(node, "end", 4)
            virtual = self.past_shape(num_kv_heads, head_dim)                                # [4] int64
            if (start, end) != (0, 4):
                virtual = self.op("Slice", virtual, self.const([start]), self.const([end]))
            node.outputs[0].replace_all_uses_with(virtual)

    def heads_shape(self, num_heads: int) -> ir.Value:
        """[0, num_heads, -1, T]: a Reshape target that regroups scores [B, ·, ·, T] by heads."""
        key = ("heads_shape", num_heads)
        if key not in self._cache:
            width = self.op("Unsqueeze", self.context_width(), self.const([0]))
            self._cache[key] = self.op("Concat", self.const([0, num_heads, -1]), width, axis=0)
        return self._cache[key]

    def block_ids(self, row: int) -> ir.Value:
        """[B, MB] block ids of the K (row 0) or V (row 1) blocks; the same table in the separate layout."""
        if not self.is_combined:
            return self.block_table
        key = ("block_ids", row)
        if key not in self._cache:
            self._cache[key] = self.op("Gather", self.block_table, self.const(row), axis=1)
        return self._cache[key]

    def visible(self, window: int | None = None) -> ir.Value:
        """[B, 1, S, T] bool: key j is visible to the query at position p iff j <= p and j < context_len
        (and p - window < j, for a sliding-window layer: `window` keys including its own)."""
        key = ("visible", window)
        if key not in self._cache:
            key_pos = self.op("Range", self.const(0), self.context_width(), self.const(1))        # [T]
            query_pos = self.op("Unsqueeze", self.position_ids, self.const([2]))                  # [B, S, 1]
            context = self.op("Cast", self.op("Reshape", self.context_lens, self.const([-1, 1, 1])), to=INT64)
            visible = self.op("And", self.op("LessOrEqual", key_pos, query_pos),                # [B, S, T]
                              self.op("Less", key_pos, context))                                 # [B, 1, T]
            if window is not None:
                in_window = self.op("Greater", key_pos, self.op("Sub", query_pos, self.const(window)))
                visible = self.op("And", visible, in_window)
            self._cache[key] = self.op("Unsqueeze", visible, self.const([1]))
        return self._cache[key]

    def additive_mask(self, dtype: ir.DataType, window: int | None = None, group: int = 1) -> ir.Value:
        """[B, 1, group·S, T] of 0 where visible, the dtype's most negative finite value elsewhere.

        group > 1 repeats the rows for scores laid out [B, Hkv, G·S, T] (row g·S + s is query s of
        head g of the KV head's group), so grouped attention adds the mask without regrouping scores.
        """
        key = ("additive", dtype, window, group)
        if key not in self._cache:
            if group > 1:
                mask = self.op("Tile", self.additive_mask(dtype, window), self.const([1, 1, group, 1]))
            else:
                np_dtype = dtype.numpy()
                zero = self.const(np.zeros((), np_dtype), dtype=np_dtype)
                lowest = self.const(np.array(np.finfo(np_dtype).min, np_dtype), dtype=np_dtype)
                mask = self.op("Where", self.visible(window), zero, lowest)
            self._cache[key] = mask
        return self._cache[key]

    def rotary_rows(self, cos_cache: ir.Value, sin_cache: ir.Value, rows: ir.Value) -> tuple[ir.Value, ir.Value]:
        """cos/sin [B, 1, S, R/2] at rows [B, S] of [max_pos, R/2] caches, shared by the layers that share them."""
        key = ("rotary", id(cos_cache), id(sin_cache), id(rows))
        if key not in self._cache:
            self._cache[key] = tuple(self.op("Unsqueeze", self.op("Gather", cache, rows, axis=0), self.const([1]))
                                     for cache in (cos_cache, sin_cache))
        return self._cache[key]

    def retire(self, node: ir.Node, output: ir.Value) -> None:
        """Replace a fused attention op by `output`: its presents leave the graph outputs, the op goes."""
        node.outputs[0].replace_all_uses_with(output)
        for present in node.outputs[1:3]:
            if present.is_graph_output():
                self.graph.outputs.remove(present)
        self.graph.remove(node, safe=True)

    # -- per layer -----------------------------------------------------------------
    def write_and_read(self, pools: list[ir.Value], new_key: ir.Value, new_value: ir.Value,
                       num_kv_heads: int, tokens_first: bool = False):
        """Scatter the new K/V into the pool(s); gather each sequence's K and V [B, Hkv, T, Dh].

        new_key/new_value are [B, Hkv, S, Dh], or [B, S, Hkv, Dh] with tokens_first.
        Returns (pool outputs, key, value).
        """
        indices = self.write_indices(num_kv_heads, tokens_first)
        if self.is_combined:
            axis = self.const([0])
            updates = self.op("Concat", self.op("Unsqueeze", new_key, axis), self.op("Unsqueeze", new_value, axis), axis=0)
            outs = [self.op("ScatterND", pools[0], indices, updates)]
            key_src = value_src = outs[0]
        else:
            outs = [self.op("ScatterND", pools[0], indices, new_key), self.op("ScatterND", pools[1], indices, new_value)]
            key_src, value_src = outs
        shape = self.const([0, num_kv_heads, -1, pools[0].shape[3]])
        return outs, self._read(key_src, 0, num_kv_heads, shape), self._read(value_src, 1, num_kv_heads, shape)

    def _read(self, pool: ir.Value, row: int, num_kv_heads: int, shape: ir.Value) -> ir.Value:
        """[B, Hkv, T, Dh]: the K (row 0) or V (row 1) blocks of every sequence, whole blocks at a time."""
        blocks = self.op("GatherND", pool, self.read_indices(row, num_kv_heads))        # [B, Hkv, MB, bs, Dh]
        return self.op("Reshape", blocks, shape)
