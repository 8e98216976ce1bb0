"""Run a dense reference decoder on ONNX Runtime (CPU), one forward step at a time."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from pagedc.testing.blocks import past_names, present_names
from pagedc.testing.config import DecoderConfig

KV = tuple[np.ndarray, np.ndarray]


def make_session(model: onnx.ModelProto, *, optimize: bool = False) -> ort.InferenceSession:
    """CPU session; optimize=False runs the graph as built (ORT_DISABLE_ALL), True uses ORT's defaults."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def empty_past(config: DecoderConfig, batch_size: int) -> list[KV]:
    """Zero-length past `[B, Hkv, 0, Dh]` per layer: the prefill step."""
    shape = (batch_size, config.num_kv_heads, 0, config.head_dim)
    return [(np.zeros(shape, config.np_dtype), np.zeros(shape, config.np_dtype)) for _ in range(config.num_layers)]


def run_step(
    session: ort.InferenceSession,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray | None,
    past: list[KV],
) -> tuple[np.ndarray, list[KV]]:
    """One forward step; position_ids is fed only if the model has that input (form A)."""
    feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
    input_names = {i.name for i in session.get_inputs()}
    if "position_ids" in input_names:
        if position_ids is None:
            raise ValueError("this model has a position_ids input; pass positions.hf_position_ids(mask, past_len)")
        feeds["position_ids"] = np.asarray(position_ids, np.int64)
    for i, (key, value) in enumerate(past):
        feeds.update(zip(past_names(i), (key, value)))
    output_names = ["logits"] + [name for i in range(len(past)) for name in present_names(i)]
    logits, *flat = session.run(output_names, feeds)
    return logits, list(zip(flat[0::2], flat[1::2]))
