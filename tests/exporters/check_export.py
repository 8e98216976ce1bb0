"""Check an exported decoder against the HF torch model it came from.

Run inside the exporter's venv (needs torch, transformers, onnx, onnxruntime):

    python check_export.py --hf HF_DIR --onnx OUT/model.onnx --exporter NAME

Runs a batch-2 prefill with prompts of different lengths (so the attention
mask carries padding) and DECODE_STEPS decode steps that feed each step's
present.* outputs back as past_key_values.*, then compares every valid logit
row with the torch model run on each unpadded sequence alone.  The prefill
feeds an empty cache (past length 0), as a serving engine's first step does.  Writes
check.json next to the model (figures + the graph's I/O) and exits non-zero
when the difference exceeds TOLERANCE.

Padding side follows what the graph can express:
- no position_ids input (onnxruntime-genai, GroupQueryAttention): positions
  come from seqlens_k = sum(attention_mask) - 1, so only right padding is
  meaningful (the valid tokens of a row are its first ones, in the cache too);
- position_ids input (optimum, dynamo): left padding with
  position_ids = cumsum(attention_mask) - 1, as HF generate() does.
Inputs are fed by name, so their order does not matter (optimum's gpt2 graph
lists past_key_values.* before attention_mask and position_ids).  KV names:
past_key_values.{i}.key|value -> present.{i}.* (optimum, genai, dynamo) or
input.cache.layers.{i}.keys|values -> output.cache.layers.{i}.* (transformers'
OnnxExporter, which also takes a scalar input.cache.layers.{i}._sliding_window_tensor
on sliding-window models: fed config.sliding_window).  A graph whose batch is
specialised to 1 (OnnxExporter's ORT-fused batch-1 export, no attention_mask)
runs each prompt alone ("padding": "none").

Arch differences handled here: gpt2 has no num_key_value_heads/head_dim in its
config (MHA: KV heads = heads, head_dim = hidden / heads, see kv_dims) and no
rotary embedding (rope_theta recorded as null).
"""

import argparse
import collections
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

TOLERANCE = 1e-4
PROMPT_LENS = [7, 4]
DECODE_STEPS = 4
PAD_ID = 0


def make_tokens(vocab: int):
    """Deterministic prompts and teacher-forced decode tokens (ids >= 4: no specials)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(4, vocab, n).tolist() for n in PROMPT_LENS]
    steps = rng.integers(4, vocab, (len(PROMPT_LENS), DECODE_STEPS)).tolist()
    return prompts, steps


def torch_reference(model, prompts, steps):
    """Per-row logits [len + steps, V] of each full unpadded sequence."""
    out = []
    with torch.no_grad():
        for prompt, extra in zip(prompts, steps, strict=True):
            ids = torch.tensor([prompt + extra])
            out.append(model(input_ids=ids, use_cache=False).logits[0].float().numpy())
    return out


def io_summary(model_path: pathlib.Path) -> dict:
    """Names, dtypes and (symbolic) shapes of the graph's inputs/outputs, plus op counts."""
    m = onnx.load(str(model_path), load_external_data=False)

    def describe(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    ops = collections.Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in m.graph.node)
    return {
        "inputs": describe(m.graph.input),
        "outputs": describe(m.graph.output),
        "num_nodes": len(m.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
    }


def kv_dims(config) -> tuple:
    """(KV heads, head_dim) of a config; gpt2 (MHA) and phi3 have no head_dim field, gpt2 no KV heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


KV_PREFIXES = {"past_key_values.": "present.", "input.cache.layers.": "output.cache.layers."}  # past -> present


def kv_names(session):
    """(past input, present output) name pairs of the KV tensors, matched by their shared suffix."""
    outs = {o.name for o in session.get_outputs()}
    pairs = []
    for i in session.get_inputs():
        for past, present in KV_PREFIXES.items():
            if i.name.startswith(past) and i.name.endswith(("key", "value", "keys", "values")):
                assert present + i.name[len(past) :] in outs, (i.name, sorted(outs))
                pairs.append((i.name, present + i.name[len(past) :]))
    return pairs


def state_feeds(session, config) -> dict:
    """Scalar cache state transformers' exports carry (_sliding_window_tensor), as its cache holds it."""
    window = getattr(config, "sliding_window", None) or 0
    return {i.name: np.array(window, np.int64) for i in session.get_inputs() if i.name.endswith("_sliding_window_tensor")}


class OnnxDecoder:
    """Drives one exported decoder through prefill + decode, keeping past KV."""

    def __init__(self, path: pathlib.Path, config):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.padding = "left" if "position_ids" in self.input_names else "right"
        if "attention_mask" not in self.input_names:
            self.padding = "none"  # batch specialised to 1: one unpadded prompt per run
        self.kv = kv_names(self.session)
        self.state = state_feeds(self.session, config)
        self.kv_heads, self.head_dim = kv_dims(config)

    def run(self, ids, mask, positions, past):
        """One session run; returns logits and the present.* arrays by past name."""
        feeds = {"input_ids": ids, **past, **self.state}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        if "position_ids" in self.input_names:
            feeds["position_ids"] = positions
        missing = self.input_names - set(feeds)
        assert not missing, f"check does not know how to feed {sorted(missing)}"
        outs = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds), strict=True))
        return outs["logits"], {p: outs[q] for p, q in self.kv}

    def prefill(self, prompts):
        """Padded batch prefill; returns per-row logits of the valid tokens."""
        lens = [len(p) for p in prompts]
        b, width = len(prompts), max(lens)
        ids = np.full((b, width), PAD_ID, np.int64)
        mask = np.zeros((b, width), np.int64)
        for r, p in enumerate(prompts):
            cols = slice(0, len(p)) if self.padding != "left" else slice(width - len(p), width)
            ids[r, cols], mask[r, cols] = p, 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        empty = np.zeros((b, self.kv_heads, 0, self.head_dim), np.float32)  # no past yet
        past = {name: empty for name, _ in self.kv}
        self.prefill_past_len = empty.shape[2]
        logits, self.past = self.run(ids, mask, positions, past)
        self.mask, self.lens = mask, np.array(lens)
        if self.padding != "left":
            return [logits[r, :n] for r, n in enumerate(lens)]
        return [logits[r, width - n :] for r, n in enumerate(lens)]

    def decode(self, tokens):
        """One decode step of one token per row; returns logits [B, V]."""
        self.lens = self.lens + 1
        total = self.mask.shape[1] + 1
        if self.padding != "left":  # only the count of ones matters (seqlens_k)
            self.mask = (np.arange(total)[None, :] < self.lens[:, None]).astype(np.int64)
        else:
            self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        ids = np.array(tokens, np.int64)[:, None]
        positions = (self.lens - 1)[:, None].astype(np.int64)
        logits, self.past = self.run(ids, self.mask, positions, self.past)
        return logits[:, 0]


def compare(hf_dir: pathlib.Path, onnx_path: pathlib.Path) -> dict:
    """Run torch and ONNX side by side; return the figures for check.json."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompts, steps = make_tokens(model.config.vocab_size)
    ref = torch_reference(model, prompts, steps)
    dec = OnnxDecoder(onnx_path, model.config)
    if dec.padding == "none":  # batch fixed to 1: each prompt alone, the per-step diffs maxed over prompts
        decoders = [OnnxDecoder(onnx_path, model.config) for _ in prompts]
        runs = [run_batch(d, [p], [s], [r]) for d, p, s, r in zip(decoders, prompts, steps, ref, strict=True)]
        dec = decoders[-1]  # for the figures below (past length, present shapes)
        prefill_diff = max(r[0] for r in runs)
        decode_diffs = [max(r[1][t] for r in runs) for t in range(DECODE_STEPS)]
    else:
        prefill_diff, decode_diffs = run_batch(dec, prompts, steps, ref)
    return {
        "batch": 1 if dec.padding == "none" else len(prompts),
        "prompt_lens": PROMPT_LENS,
        "padding": dec.padding,
        "prefill_past_len": dec.prefill_past_len,
        "decode_steps": DECODE_STEPS,
        "prefill_max_abs_diff": prefill_diff,
        "decode_max_abs_diff": decode_diffs,
        "max_abs_diff": max([prefill_diff, *decode_diffs]),
        "logits_max_abs": float(max(np.abs(r).max() for r in ref)),
        "tolerance": TOLERANCE,
        "present_shapes_after_decode": {q: list(dec.past[p].shape) for p, q in dec.kv},
        "rope_theta": measured_rope_theta(model),
    }


def run_batch(dec: OnnxDecoder, prompts, steps, ref) -> tuple[float, list[float]]:
    """Prefill `prompts` as one batch, then DECODE_STEPS teacher-forced steps; max abs diffs vs `ref`."""
    got = dec.prefill(prompts)
    prefill_diff = max(float(np.abs(g - r[: len(g)]).max()) for g, r in zip(got, ref, strict=True))
    decode_diffs = []
    for t in range(DECODE_STEPS):
        logits = dec.decode([s[t] for s in steps])
        rows = np.stack([r[len(p) + t] for r, p in zip(ref, prompts, strict=True)])
        decode_diffs.append(float(np.abs(logits - rows).max()))
    return prefill_diff, decode_diffs


def measured_rope_theta(model) -> float | None:
    """Theta as the torch model really uses it: inv_freq[1] = theta ** (-2 / rotary_dim); None without rotary (gpt2)."""
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None:
        return None
    inv_freq = rotary.inv_freq.double()
    rotary_dim = 2 * len(inv_freq)  # head_dim * partial_rotary_factor
    return float(round(float(inv_freq[1] ** (-rotary_dim / 2))))


def versions() -> dict:
    """Versions of the packages that made and checked this export."""
    import importlib.metadata as md

    names = [
        "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx-ir",
        "onnxruntime-genai", "optimum", "optimum-onnx",
    ]  # fmt: skip
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, type=pathlib.Path)
    ap.add_argument("--onnx", required=True, type=pathlib.Path)
    ap.add_argument("--exporter", required=True)
    args = ap.parse_args()
    report = {"exporter": args.exporter, **compare(args.hf, args.onnx)}
    report["ok"] = report["max_abs_diff"] <= TOLERANCE
    report["versions"] = versions()
    report["graph"] = io_summary(args.onnx)
    out = args.onnx.parent / "check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("exporter", "padding", "prefill_max_abs_diff", "decode_max_abs_diff")}
    print(f"check: {json.dumps(summary)} -> {out}")
    if not report["ok"]:
        print(f"check FAILED: max abs diff {report['max_abs_diff']:.3g} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
