"""Builds the paged-attention pieces every rewritten layer shares (DESIGN.md §3).

Letters: B batch, S new tokens per sequence, N = B·S, H heads, Hkv KV heads,
G = H / Hkv, Dh head dim, MB max blocks per sequence, bs block_size,
T = MB·bs (context a sequence can see), NB num_blocks.

    slot_mapping [N] ─▶ (block, head, offset) indices [N, Hkv, 3]          (once per graph)
    key_cache.{i} [NB,Hkv,bs,Dh] ─ScatterND(indices, new_key [N,Hkv,Dh])─▶ key_cache_out.{i}
    key_cache_out.{i} ─Gather(block_table [B,MB], axis 0)─▶ [B,MB,Hkv,bs,Dh] ─▶ key [B,Hkv,T,Dh]
    position_ids, context_lens ─▶ mask [B,1,S,T]: key j visible iff j <= position and j < context_len

Worked example, block_size=4, block_table=[7, 2]: positions 0..3 live in slots
28..31 and positions 4..7 in slots 8..11; slot 9 = block 2, offset 1.

Combined layout: one pool per layer holds both K and V blocks; `block_table`
is [B, 2, MB] (row 0 K blocks, row 1 V blocks) and `slot_mapping` is [2, N]
(row 0 K slots, row 1 V slots), so K and V of one token may live in
different blocks. One ScatterND writes both.

NOTE: every read of a pool consumes the ScatterND output and nothing else
reads the pool input: under ONNX Runtime IOBinding input and output share
one buffer, the scatter runs in place, and this ordering is what makes the
read see the write.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

INT32, INT64 = ir.DataType.INT32, ir.DataType.INT64


class PagedBuilder:
    """Adds the paged ABI inputs to a graph and builds per-layer pool writes, reads and masks."""

    def __init__(self, graph: ir.Graph, block_size: int, layout: str, position_ids: ir.Value | None):
        self.graph = graph
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

    # -- small helpers -------------------------------------------------------------
    def _input(self, name: str, dtype: ir.DataType, dims: list) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))
        self.graph.inputs.append(value)
        return value

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
    def write_indices(self, num_kv_heads: int) -> ir.Value:
        """[N, Hkv, 3] int64 (block, head, offset) for every slot (combined: [2N, Hkv, 3], K rows first)."""
        key = ("indices", num_kv_heads)
        if key not in self._cache:
            slots = self.op("Cast", self.op("Reshape", self.slot_mapping, self.const([-1, 1, 1])), to=INT64)
            block = self.op("Div", slots, self.const(self.block_size))      # [N, 1, 1]
            offset = self.op("Mod", slots, self.const(self.block_size))     # [N, 1, 1]
            heads = self.const(np.arange(num_kv_heads).reshape(1, num_kv_heads, 1))
            shape = self.op("Concat", self.op("Shape", slots, end=1), self.const([num_kv_heads, 1]), axis=0)
            parts = [self.op("Expand", part, shape) for part in (block, heads, offset)]
            self._cache[key] = self.op("Concat", *parts, axis=-1)
        return self._cache[key]

    def block_ids(self, row: int) -> ir.Value:
        """[B, MB] block ids of the K (row 0) or V (row 1) blocks; the same table in the separate layout."""
        if not self.is_combined:
            return self.block_table
        key = ("block_ids", row)
        if key not in self._cache:
            self._cache[key] = self.op("Gather", self.block_table, self.const(row), axis=1)
        return self._cache[key]

    def visible(self) -> ir.Value:
        """[B, 1, S, T] bool: key j is visible to the query at position p iff j <= p and j < context_len."""
        if "visible" not in self._cache:
            num_blocks = self.op("Shape", self.block_ids(0), start=1, end=2)
            total = self.op("Squeeze", self.op("Mul", num_blocks, self.const([self.block_size])), self.const([0]))
            key_pos = self.op("Range", self.const(0), total, self.const(1))                        # [T]
            query_pos = self.op("Unsqueeze", self.position_ids, self.const([2]))                  # [B, S, 1]
            context = self.op("Cast", self.op("Reshape", self.context_lens, self.const([-1, 1, 1])), to=INT64)
            causal = self.op("LessOrEqual", key_pos, query_pos)                                   # [B, S, T]
            in_context = self.op("Less", key_pos, context)                                        # [B, 1, T]
            self._cache["visible"] = self.op("Unsqueeze", self.op("And", causal, in_context), self.const([1]))
        return self._cache["visible"]

    def additive_mask(self, dtype: ir.DataType) -> ir.Value:
        """[B, 1, S, T] of 0 where visible, the dtype's most negative finite value elsewhere."""
        key = ("additive", dtype)
        if key not in self._cache:
            np_dtype = dtype.numpy()
            zero = self.const(np.zeros((), np_dtype), dtype=np_dtype)
            lowest = self.const(np.array(np.finfo(np_dtype).min, np_dtype), dtype=np_dtype)
            self._cache[key] = self.op("Where", self.visible(), zero, lowest)
        return self._cache[key]

    # -- per layer -----------------------------------------------------------------
    def write_and_read(self, pool: ir.Value, new_key: ir.Value, new_value: ir.Value,
                       num_kv_heads: int, head_dim: int, value_pool: ir.Value | None = None):
        """Scatter new K/V ([N, Hkv, Dh]) into the pool(s); gather each sequence's K and V [B, Hkv, T, Dh].

        Returns (pool outputs, key, value); separate layout passes `value_pool`.
        """
        indices = self.write_indices(num_kv_heads)
        if self.is_combined:
            updates = self.op("Concat", new_key, new_value, axis=0)   # [2N, Hkv, Dh]
            pool_out = self.op("ScatterND", pool, indices, updates)
            outs = [pool_out]
            key_src, value_src = pool_out, pool_out
        else:
            key_src = self.op("ScatterND", pool, indices, new_key)
            value_src = self.op("ScatterND", value_pool, indices, new_value)
            outs = [key_src, value_src]
        key = self._read(key_src, self.block_ids(0), num_kv_heads, head_dim)
        value = self._read(value_src, self.block_ids(1), num_kv_heads, head_dim)
        return outs, key, value

    def _read(self, pool_out: ir.Value, block_ids: ir.Value, num_kv_heads: int, head_dim: int) -> ir.Value:
        blocks = self.op("Gather", pool_out, block_ids, axis=0)                 # [B, MB, Hkv, bs, Dh]
        blocks = self.op("Transpose", blocks, perm=[0, 2, 1, 3, 4])             # [B, Hkv, MB, bs, Dh]
        return self.op("Reshape", blocks, self.const([0, num_kv_heads, -1, head_dim]))  # [B, Hkv, T, Dh]

    def tokens(self, x_BHSDh: ir.Value, num_heads: int, head_dim: int) -> ir.Value:
        """[B, Hkv, S, Dh] -> [N, Hkv, Dh], rows in (b, s) order like slot_mapping."""
        x = self.op("Transpose", x_BHSDh, perm=[0, 2, 1, 3])
        return self.op("Reshape", x, self.const([-1, num_heads, head_dim]))
