"""The reference side of `pagedc verify`: a dense-cache model, one sequence at a time, on ONNX Runtime.

Each step feeds the past K/V of the previous step back in, as a dense-cache
generation loop does; which graph input is fed by which output is read off
the graph by the same detection the paged pass uses, so any accepted source
form (Optimum, genai builder, ...) runs here unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pagedc.errors import ModelError
from pagedc.model_file import load_model
from pagedc.passes.detect import find_attention_sites


class DenseRunner:
    """One sequence through a dense-cache ONNX model, chunk by chunk."""

    def __init__(self, path: str | Path, optimize: bool = False, intra_op_threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads     # 0: ONNX Runtime's default (one per core)
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sites = find_attention_sites(load_model(path)).sites
        if not sites:
            raise ModelError(f"{path}: no attention layer with a dense KV cache; is this the standard (dense) model?")
        self.kv = [(s.past_key, s.present_key) for s in sites] + [(s.past_value, s.present_value) for s in sites]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.dtype = np.float16 if "float16" in self.inputs[sites[0].past_key].type else np.float32
        self.kv_shape = (sites[0].num_kv_heads, sites[0].head_dim)
        self.state = _cache_state_feeds(self.inputs, sites)

    def run(self, tokens: list[int], chunks: list[int]) -> list[np.ndarray]:
        """Logits [chunk_len, V] of each chunk of `tokens` (chunk lengths sum to len(tokens))."""
        past, start, logits = self._empty_past(), 0, []
        for size in chunks:
            step_logits, past = self.step(tokens[start : start + size], start, past)
            logits.append(step_logits)
            start += size
        return logits

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """The dense-cache greedy loop: prefill, then one token per step with the cache fed back."""
        logits, past = self.step(prompt, 0, self._empty_past())
        out = [int(np.argmax(logits[-1]))]
        while len(out) < max_new_tokens:
            logits, past = self.step(out[-1:], len(prompt) + len(out) - 1, past)
            out.append(int(np.argmax(logits[-1])))
        return out

    def _empty_past(self) -> dict[str, np.ndarray]:
        return {name: np.zeros((1, self.kv_shape[0], 0, self.kv_shape[1]), self.dtype) for name, _ in self.kv}

    def step(self, tokens: list[int], start: int, past: dict | None = None) -> tuple[np.ndarray, dict]:
        """Run `tokens` at positions start.. on top of `past`; returns (logits [S, V], the new past)."""
        past = self._empty_past() if past is None else past
        size = len(tokens)
        feed = {"input_ids": np.asarray([tokens], np.int64), **past, **self.state}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, start + size), np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(start, start + size, dtype=np.int64)[None]
        outputs = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feed)))
        return outputs["logits"][0], {p: outputs[q] for p, q in self.kv}


def _cache_state_feeds(inputs: dict, sites: list) -> dict[str, np.ndarray]:
    """Scalar cache state transformers' exports carry per layer (`input.cache.layers.{i}._sliding_window_tensor`,
    passed through to an output unused): fed the layer's window, as the exporter's cache holds it."""
    windows = {site.layer: site.window or 0 for site in sites}
    feeds = {}
    for name in inputs:
        if name.endswith("_sliding_window_tensor"):
            layer = next((int(part) for part in name.split(".") if part.isdecimal()), None)
            feeds[name] = np.array(windows.get(layer, 0), np.int64)
    return feeds
