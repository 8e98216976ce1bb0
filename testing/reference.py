"""NumPy reference forward pass of the test decoders (float32 math, both forms).

    logits, present = reference_forward(config, weights, input_ids, attention_mask, position_ids, past)
    # past/present: [(key, value)] per layer, [B, Hkv, P, Dh] / [B, Hkv, P + S, Dh]; logits [B, S, V]

It shares no code with the graph builders beyond DecoderConfig and the weight
names: RoPE angles, masks and KV placement are recomputed here, so a test that
compares ORT with this function can fail.

form="decomposed" (form A, HF semantics). present = Concat(past, new) on the
sequence axis. Query i of row b (cache index P + i) sees key j iff
attention_mask[b, j] == 1 and j <= P + i (and j > P + i - sliding_window).
Masked scores get finfo(float32).min added, so a fully masked row (a left-pad
query) attends uniformly to all T keys, exactly what the exported graph does.
Rotary positions are the position_ids input (see positions.hf_position_ids).

form="gqa" (form B, com.microsoft.GroupQueryAttention, measured on ORT 1.32 CPU).
GQA reads attention_mask only as seqlens_k = sum(mask) - 1 and T = mask.shape[1]
and assumes every sequence's tokens are contiguous from cache index 0, i.e.
RIGHT padding, which is also how onnxruntime-genai pads a batch
(Tokenizer::EncodeBatch pads right; each decode step appends a 1 column):
- first prompt (P == 0): column s rotates with position s; query s sees keys
  j <= s with j < len_b = sum(mask[b]); a pad query with no visible key
  (only possible with a sliding window) outputs 0; present = all S new keys,
  pads included.
- later steps (P > 0): the new tokens go to cache index start_b = len_b - S,
  rotate with positions start_b + s, and query s sees keys j <= start_b + s;
  present[b] = past[b, :, :start_b] ++ new ++ zeros up to T. Stale pad keys
  from the prompt are overwritten or zeroed, so a sequence stays compact at
  the front of its cache row while its mask keeps the pad columns.
- S > 1 with P > 0 is accepted only for batch 1 (ORT rejects it otherwise).
- local_window_size = W: key j visible iff p - W < j <= p, the same window as
  form A's sliding_window (W keys including the query's own).
Left padding is therefore wrong for form B: GQA would treat the first len_b
cache slots, which hold pads, as the sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pagedc.testing.config import DecoderConfig
from pagedc.testing.positions import gqa_position_ids
from pagedc.testing.weights import layer_prefix

KV = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Site:
    """What one forward step means for every attention layer of a form."""

    positions: np.ndarray  # [B, S] rotary position of each new token
    visible: np.ndarray  # [B, S, T] bool: query s may attend to cache index j
    write: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (past [B,Hkv,P,Dh], new [B,Hkv,S,Dh]) -> [B,Hkv,T,Dh]
    is_additive_mask: bool  # True: HF finfo.min mask; False: GQA (fully masked row -> 0)


def reference_forward(
    config: DecoderConfig,
    weights: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray | None,
    past: list[KV],
    *,
    form: str = "decomposed",
) -> tuple[np.ndarray, list[KV]]:
    """Logits `[B, S, V]` and present `[(key, value)]` `[B, Hkv, T, Dh]`, float32, for one step.

    input_ids `[B, S]`, attention_mask `[B, T]` (T = P + S), past `[B, Hkv, P, Dh]`
    per layer (P may be 0). form "decomposed" needs position_ids `[B, S]`; form
    "gqa" derives them like ORT when position_ids is None (gqa_position_ids).
    fp16 weights and past are upcast: this is the fp16 model in float32 math.
    """
    w = {name: np.asarray(array, dtype=np.float32) for name, array in weights.items()}
    input_ids = np.asarray(input_ids)
    past = [(np.asarray(k, np.float32), np.asarray(v, np.float32)) for k, v in past]
    site = _site(config, form, np.asarray(attention_mask), position_ids, past[0][0].shape[2], input_ids.shape[1])
    x = w["model.embed_tokens.weight"][input_ids]  # [B, S, D]
    present = []
    for i, layer_past in enumerate(past):
        p = layer_prefix(i)
        h = _rms_norm(x, w[f"{p}.input_layernorm.weight"], config.rms_norm_eps)
        attn, layer_present = _attention(config, w, p, h, site, layer_past)
        x = x + attn
        h = _rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], config.rms_norm_eps)
        x = x + _mlp(w, p, h)
        present.append(layer_present)
    logits = _rms_norm(x, w["model.norm.weight"], config.rms_norm_eps) @ w["lm_head.weight"]  # [B, S, V]
    return logits, present


def _site(config, form, mask, position_ids, past_len, seq_len) -> Site:
    if mask.shape[1] != past_len + seq_len:
        raise ValueError(f"attention_mask has {mask.shape[1]} columns, expected past {past_len} + new {seq_len}")
    if form in ("decomposed", "attention", "mha"):  # forms C and D compute form A's math in one op
        return _decomposed_site(config, mask, position_ids, past_len, seq_len)
    if form == "gqa":
        return _gqa_site(config, mask, position_ids, past_len, seq_len)
    raise ValueError(f"form must be 'decomposed', 'gqa', 'attention' or 'mha', got {form!r}")


def _decomposed_site(config, mask, position_ids, past_len, seq_len) -> Site:
    """HF: new tokens at cache index P + s; the mask column says which keys are tokens."""
    if position_ids is None:
        raise ValueError("form 'decomposed' needs position_ids (see positions.hf_position_ids)")
    batch, total = mask.shape
    query_index = np.broadcast_to(past_len + np.arange(seq_len), (batch, seq_len))[..., None]  # [B, S, 1]
    key_index = np.arange(total)[None, None, :]  # [1, 1, T]
    visible = (key_index <= query_index) & (mask[:, None, :] != 0)  # [B, S, T]
    visible &= _in_window(config, key_index, query_index)
    write = lambda past, new: np.concatenate([past, new], axis=2)  # noqa: E731
    return Site(np.asarray(position_ids), visible, write, is_additive_mask=True)


def _gqa_site(config, mask, position_ids, past_len, seq_len) -> Site:
    """ORT GroupQueryAttention: sequence b is compact in cache rows [0, sum(mask[b]))."""
    batch, total = mask.shape
    if past_len > 0 and seq_len > 1 and batch > 1:
        raise ValueError("GroupQueryAttention: batch_size must be 1 when sequence_length > 1 and past context is given")
    num_tokens = mask.sum(axis=1).astype(np.int64)  # [B] = seqlens_k + 1
    start = np.zeros(batch, np.int64) if past_len == 0 else num_tokens - seq_len  # [B] first new cache index
    query_index = (start[:, None] + np.arange(seq_len))[..., None]  # [B, S, 1]
    key_index = np.arange(total)[None, None, :]  # [1, 1, T]
    visible = (key_index <= query_index) & (key_index < num_tokens[:, None, None])  # [B, S, T]
    visible &= _in_window(config, key_index, query_index)
    write = lambda past, new: _gqa_write(past, new, start, total)  # noqa: E731
    positions = gqa_position_ids(mask, past_len) if position_ids is None else np.asarray(position_ids)
    return Site(positions, visible, write, is_additive_mask=False)


def _in_window(config: DecoderConfig, key_index: np.ndarray, query_index: np.ndarray) -> np.ndarray:
    if config.sliding_window is None:
        return np.ones((), bool)
    return key_index > query_index - config.sliding_window


def _gqa_write(past: np.ndarray, new: np.ndarray, start: np.ndarray, total: int) -> np.ndarray:
    """GQA's present: first prompt keeps all new rows; later, past[:start] ++ new ++ zeros."""
    if past.shape[2] == 0:
        return new.copy()
    batch, heads, seq, head_dim = new.shape
    present = np.zeros((batch, heads, total, head_dim), np.float32)  # [B, Hkv, T, Dh]
    for b in range(batch):
        present[b, :, : start[b]] = past[b, :, : start[b]]
        present[b, :, start[b] : start[b] + seq] = new[b]
    return present


def _attention(config: DecoderConfig, w: dict, p: str, h: np.ndarray, site: Site, past: KV):
    batch, seq, _ = h.shape
    q = _split_heads(h @ w[f"{p}.self_attn.q_proj.weight"], config.head_dim)  # [B, H, S, Dh]
    k = _split_heads(h @ w[f"{p}.self_attn.k_proj.weight"], config.head_dim)  # [B, Hkv, S, Dh]
    v = _split_heads(h @ w[f"{p}.self_attn.v_proj.weight"], config.head_dim)  # [B, Hkv, S, Dh]
    q, k = _rope(q, site.positions, config), _rope(k, site.positions, config)
    key, value = site.write(past[0], k), site.write(past[1], v)  # [B, Hkv, T, Dh]
    # query head n reads KV head n // num_groups (HF repeat_kv, ORT GQA)
    key_n = np.repeat(key, config.num_groups, axis=1)  # [B, H, T, Dh]
    value_n = np.repeat(value, config.num_groups, axis=1)  # [B, H, T, Dh]
    scores = (q @ key_n.swapaxes(-1, -2)) * np.float32(config.scale)  # [B, H, S, T]
    probs = _softmax(scores, site.visible[:, None], site.is_additive_mask)
    out = (probs @ value_n).transpose(0, 2, 1, 3).reshape(batch, seq, -1)  # [B, S, H*Dh]
    return out @ w[f"{p}.self_attn.o_proj.weight"], (key, value)


def _softmax(scores: np.ndarray, visible: np.ndarray, is_additive_mask: bool) -> np.ndarray:
    if is_additive_mask:  # HF: scores + (0 | finfo.min); a fully masked row becomes uniform
        scores = scores + np.where(visible, 0.0, np.finfo(np.float32).min).astype(np.float32)
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    row_max = np.where(visible, scores, -np.inf).max(axis=-1, keepdims=True)
    e = np.where(visible, np.exp(scores - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)  # GQA: fully masked row -> 0


def _split_heads(x: np.ndarray, head_dim: int) -> np.ndarray:
    batch, seq, _ = x.shape
    return x.reshape(batch, seq, -1, head_dim).transpose(0, 2, 1, 3)  # [B, N, S, Dh]


def _rope(x: np.ndarray, positions: np.ndarray, config: DecoderConfig) -> np.ndarray:
    """rotate_half RoPE; x [B, N, S, Dh], positions [B, S]."""
    half = config.head_dim // 2
    inv_freq = config.rope_theta ** (-np.arange(half, dtype=np.float64) * 2.0 / config.head_dim)  # [Dh/2]
    angles = positions[..., None].astype(np.float64) * inv_freq  # [B, S, Dh/2]
    cos, sin = np.cos(angles)[:, None].astype(np.float32), np.sin(angles)[:, None].astype(np.float32)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)))


def _mlp(w: dict, p: str, h: np.ndarray) -> np.ndarray:
    gate = h @ w[f"{p}.mlp.gate_proj.weight"]
    silu = gate / (1.0 + np.exp(-gate))
    return (silu * (h @ w[f"{p}.mlp.up_proj.weight"])) @ w[f"{p}.mlp.down_proj.weight"]
