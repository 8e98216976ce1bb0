"""The cached real-exporter models are there, checked, and run in the main venv.

These run on the exports fixtures.py builds (first run: a few minutes for all
of CASES; later runs read the cache).  They pin down what pagedc's passes can
count on: the I/O of each exporter's graph, that each graph matches the torch
model it came from, and the arch-specific structure (fused QKV projections,
learned positions) of gpt2 and phi3.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from .fixtures import ARCH_EXPORTERS, ARCHS, CASES, export_check

# The tiny models make_hf_model.py builds.
VOCAB, LAYERS, HIDDEN, HEADS, HEAD_DIM, MAX_POSITIONS = 1000, 2, 128, 4, 32, 256
KV_HEADS = {"llama": 2, "qwen2": 2, "phi3": 2, "gpt2": 4, "qwen3": 2, "mistral": 2}  # gpt2 is MHA
ROPE_THETA = {a: 5e4 for a in KV_HEADS} | {"gpt2": None}  # gpt2: learned positions, no rotary
SLIDING_WINDOW = {"mistral": 5}  # make_hf_model.SLIDING_WINDOW
KV_PREFIXES = {"past_key_values.": "present.", "input.cache.layers.": "output.cache.layers."}  # past -> present


def archs_of(exporter):
    return [a for a in ARCHS if exporter in ARCH_EXPORTERS[a]]


GENAI_ARCHS = archs_of("genai")


def present_to_past(name):
    """present.0.key -> past_key_values.0.key, output.cache.layers.0.keys -> input.cache.layers.0.keys; else None."""
    for past, present in KV_PREFIXES.items():
        if name.startswith(present):
            return past + name[len(present) :]
    return None


def run_step(session, ids, past, past_len):
    """One unpadded batch run: feeds whatever of ids/mask/positions/past the graph takes."""
    b, s = ids.shape
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((b, past_len + s), np.int64),
        "position_ids": np.tile(np.arange(past_len, past_len + s, dtype=np.int64), (b, 1)),
        **past,
    }
    for i in session.get_inputs():  # transformers' sliding-window cache state, passed through
        if i.name.endswith("_sliding_window_tensor"):
            feeds[i.name] = np.array(5, np.int64)
    wanted = {i.name for i in session.get_inputs()}
    assert wanted <= set(feeds), sorted(wanted - set(feeds))
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True))
    return outs["logits"], {k: v for k, v in outs.items() if present_to_past(k) and v.ndim == 4}


def prefill_and_decode(path, arch, ids, next_ids):
    """Prefill ids [B, S], then one decode step with next_ids [B, 1]; returns both results.

    A graph whose batch is specialised to 1 (transformers-b1) runs the rows one at a time, stacked."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if session.get_inputs()[0].shape[0] == 1 and ids.shape[0] > 1:
        rows = [prefill_and_decode(path, arch, ids[r : r + 1], next_ids[r : r + 1]) for r in range(ids.shape[0])]
        stack = lambda step: (np.concatenate([r[step][0] for r in rows]),  # noqa: E731
                              {k: np.concatenate([r[step][1][k] for r in rows]) for k in rows[0][step][1]})
        return stack(0), stack(1)
    b = ids.shape[0]
    past = {
        i.name: np.zeros((b, KV_HEADS[arch], 0, HEAD_DIM), np.float32)
        for i in session.get_inputs()
        if any(i.name.startswith(p) for p in KV_PREFIXES) and len(i.shape) == 4
    }
    logits, present = run_step(session, ids, past, 0)
    fed = {present_to_past(k): v for k, v in present.items()}
    logits2, present2 = run_step(session, next_ids, fed, ids.shape[1])
    return (logits, present), (logits2, present2)


@pytest.mark.parametrize("arch,exporter", CASES)
def test_export_checked_against_torch(exported_model_factory, arch, exporter):
    exported_model_factory(arch, exporter)
    check = export_check(arch, exporter)
    assert check["ok"] and check["max_abs_diff"] < 1e-4, check
    assert check["decode_steps"] >= 3 and len(check["decode_max_abs_diff"]) >= 3
    # padded prefill; a batch-1 export runs the two prompts alone
    assert check["batch"] == (1 if exporter == "transformers-b1" else 2) and len(set(check["prompt_lens"])) == 2
    # The exporter's transformers read the non-default theta (gpt2: no rotary at all).
    assert check["rope_theta"] == ROPE_THETA[arch]


@pytest.mark.parametrize("arch,exporter", CASES)
def test_export_runs_in_main_venv(exported_model_factory, arch, exporter):
    path = exported_model_factory(arch, exporter)
    ids = np.array([[5, 17, 42]], np.int64)
    (logits, present), (logits2, present2) = prefill_and_decode(path, arch, ids, np.array([[7]], np.int64))
    assert logits.shape == (1, 3, VOCAB) and logits2.shape == (1, 1, VOCAB)
    assert np.isfinite(logits).all() and np.isfinite(logits2).all()
    assert len(present) == 2 * LAYERS
    for name in present:
        assert present[name].shape == (1, KV_HEADS[arch], 3, HEAD_DIM), name
        assert present2[name].shape == (1, KV_HEADS[arch], 4, HEAD_DIM), name


@pytest.mark.parametrize("arch", ARCHS)
def test_exporters_agree(exported_model_factory, arch):
    """All exports of one arch come from the same HF weights, so their logits agree."""
    exporters = ARCH_EXPORTERS[arch]
    paths = [exported_model_factory(arch, e) for e in exporters]
    ids = np.array([[5, 17, 42, 300], [9, 8, 7, 6]], np.int64)
    nxt = np.array([[11], [12]], np.int64)
    (a1, _), (a2, _) = prefill_and_decode(paths[0], arch, ids, nxt)
    for exporter, path in zip(exporters[1:], paths[1:], strict=True):
        (b1, _), (b2, _) = prefill_and_decode(path, arch, ids, nxt)
        np.testing.assert_allclose(a1, b1, atol=1e-4, rtol=0, err_msg=f"{exporters[0]} vs {exporter} prefill")
        np.testing.assert_allclose(a2, b2, atol=1e-4, rtol=0, err_msg=f"{exporters[0]} vs {exporter} decode")


def consumers(graph, name):
    return [n for n in graph.node if name in n.input]


@pytest.mark.parametrize("arch", GENAI_ARCHS)
def test_genai_uses_group_query_attention(exported_model_factory, arch):
    graph = onnx.load(str(exported_model_factory(arch, "genai")), load_external_data=False).graph
    names = {i.name for i in graph.input}
    assert "position_ids" not in names  # positions come from attention_mask via seqlens_k
    gqa = [n for n in graph.node if (n.domain, n.op_type) == ("com.microsoft", "GroupQueryAttention")]
    assert len(gqa) == LAYERS
    for i, node in enumerate(gqa):
        assert node.input[3:5] == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert node.output[1:3] == [f"present.{i}.key", f"present.{i}.value"]


@pytest.mark.parametrize("arch", archs_of("optimum"))
def test_optimum_concats_past(exported_model_factory, arch):
    graph = onnx.load(str(exported_model_factory(arch, "optimum"))).graph
    assert "position_ids" in {i.name for i in graph.input}
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")]  # plain ONNX only
    outputs = {o.name for o in graph.output}
    for i in graph.input:
        if i.name.startswith("past_key_values."):
            # Concat(past, new, axis=-2) -> present; layer 0's key also feeds a Shape (past length).
            concats = [n for n in consumers(graph, i.name) if n.op_type == "Concat"]
            assert len(concats) == 1 and concats[0].input[0] == i.name, i.name
            assert onnx.helper.get_attribute_value(concats[0].attribute[0]) == -2
            assert concats[0].output[0] == "present." + i.name[len("past_key_values.") :]
            assert concats[0].output[0] in outputs


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("arch", archs_of("dynamo"))
def test_dynamo_io_and_concats_past(exported_model_factory, arch):
    model = onnx.load(str(exported_model_factory(arch, "dynamo")))
    graph = model.graph
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] >= 18
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")] and not model.functions  # plain ONNX
    kv = [f"{i}.{t}" for i in range(LAYERS) for t in ("key", "value")]
    inputs = {i.name: dims(i) for i in graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv)]
    assert [o.name for o in graph.output] == ["logits", *(f"present.{n}" for n in kv)]
    assert inputs["input_ids"] == inputs["position_ids"] == ["batch", "sequence_length"]
    assert inputs["attention_mask"] == ["batch", "past_sequence_length + sequence_length"]
    for n in kv:
        assert inputs[f"past_key_values.{n}"] == ["batch", KV_HEADS[arch], "past_sequence_length", HEAD_DIM]
    # Attention is decomposed (no SDPA-like op): one Softmax per layer.
    assert sum(n.op_type == "Softmax" for n in graph.node) == LAYERS
    for i in graph.input:
        if i.name.startswith("past_key_values."):
            # Concat(past, new, axis=-2) is the present output itself; other consumers only read Shape.
            uses = consumers(graph, i.name)
            concats = [n for n in uses if n.op_type == "Concat"]
            assert len(concats) == 1 and concats[0].input[0] == i.name, i.name
            assert onnx.helper.get_attribute_value(concats[0].attribute[0]) == -2
            assert concats[0].output[0] == "present." + i.name[len("past_key_values.") :]
            assert {n.op_type for n in uses} <= {"Concat", "Shape"}, i.name


def initializer_shapes(graph):
    return {i.name: list(i.dims) for i in graph.initializer}


def through_reshapes(graph, name):
    """The consumers of `name`, looking through Reshape nodes (gpt2's Gemm works on [B*S, hidden])."""
    found = []
    for node in consumers(graph, name):
        found += through_reshapes(graph, node.output[0]) if node.op_type == "Reshape" else [node]
    return found


def attribute(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


FUSED_QKV_CASES = [(a, e) for a, e in CASES if a in ("gpt2", "phi3")]


@pytest.mark.parametrize("arch,exporter", FUSED_QKV_CASES)
def test_fused_qkv_projection(exported_model_factory, arch, exporter):
    """gpt2 and phi3 project Q, K and V with ONE weight per layer, [hidden, (H + 2 Hkv) Dh], laid out
    [q | k | v]; each exporter splits its output differently (or not at all)."""
    graph = onnx.load(str(exported_model_factory(arch, exporter)), load_external_data=False).graph
    shapes = initializer_shapes(graph)
    width = (HEADS + 2 * KV_HEADS[arch]) * HEAD_DIM  # gpt2: 384, phi3: 256
    projections = [
        n for n in graph.node if n.op_type in ("MatMul", "Gemm") and shapes.get(n.input[1]) == [HIDDEN, width]
    ]
    split = []  # the projections whose output is split into q, k, v (phi3's [128, 256] also matches genai's gate/up)
    for node in projections:
        uses = through_reshapes(graph, node.output[0])
        kinds = sorted(n.op_type for n in uses)
        if kinds == ["GroupQueryAttention"]:  # genai: packed QKV straight into GQA, key/value inputs empty
            assert uses[0].input[0] == node.output[0] and uses[0].input[1:3] == ["", ""]
        elif kinds == ["Split"]:  # gpt2: Reshape [B, S, 3 * hidden] -> Split(axis=2) into 3 equal parts
            assert len(uses[0].output) == 3 and attribute(uses[0], "axis") == 2
        elif kinds == ["Slice"] * 3:  # phi3 (optimum, dynamo): three Slices of the last axis
            pass
        else:
            continue
        split.append(node)
    assert len(split) == LAYERS, [(n.op_type, n.input[1]) for n in projections]
    if arch == "gpt2":  # Conv1D with bias: Gemm(x [B*S, hidden], W [hidden, 3 hidden], b [3 hidden])
        for node in split:
            assert node.op_type == "Gemm" and shapes[node.input[2]] == [width]
    else:  # phi3's qkv_proj has no bias
        assert all(node.op_type == "MatMul" for node in split)


@pytest.mark.parametrize("exporter", ARCH_EXPORTERS["gpt2"])
def test_gpt2_learned_positions(exported_model_factory, exporter):
    """gpt2 has no rotary: positions enter once, as Gather(wpe [max_positions, hidden], position_ids)."""
    graph = onnx.load(str(exported_model_factory("gpt2", exporter))).graph
    shapes = initializer_shapes(graph)
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Sin", "Cos"}, ops
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")]  # plain ONNX
    wpe = [n for n in graph.node if n.op_type == "Gather" and shapes.get(n.input[0]) == [MAX_POSITIONS, HIDDEN]]
    assert len(wpe) == 1 and wpe[0].input[1] == "position_ids"
    assert sum(n.op_type == "LayerNormalization" for n in graph.node) == 2 * LAYERS + 1  # ln_1, ln_2, ln_f


@pytest.mark.parametrize("arch,exporter", [(a, e) for a, e in CASES if e.startswith("transformers")])
def test_transformers_exporter_io(exported_model_factory, arch, exporter):
    """transformers' OnnxExporter: input.cache.layers.{i}.keys|values with the static KV heads and head dim
    written as numeral dim_params; -b1 specialises the batch to 1, drops attention_mask and fuses attention
    into GroupQueryAttention with an attention_bias; mistral carries _sliding_window_tensor scalars."""
    graph = onnx.load(str(exported_model_factory(arch, exporter)), load_external_data=False).graph
    inputs = {i.name: dims(i) for i in graph.input}
    for i in range(LAYERS):
        for t in ("keys", "values"):
            shape = inputs[f"input.cache.layers.{i}.{t}"]
            assert shape[1:4:2] == [str(KV_HEADS[arch]), str(HEAD_DIM)], shape
            assert f"output.cache.layers.{i}.{t}" in {o.name for o in graph.output}
        assert (f"input.cache.layers.{i}._sliding_window_tensor" in inputs) == (arch in SLIDING_WINDOW)
    assert ("attention_mask" in inputs) == (exporter != "transformers-b1")
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if exporter == "transformers-b1":
        assert inputs["input_ids"][0] == 1 and len(gqa) == LAYERS and all(len(n.input) >= 11 and n.input[10] for n in gqa)
    else:
        assert not gqa and sum(n.op_type == "Softmax" for n in graph.node) == LAYERS
