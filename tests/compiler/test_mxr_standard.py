"""--emit-standard's static dense models, fed by StandardKVCache and run by ONNX Runtime, match the dynamic model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from pagedc.model_file import load_model
from pagedc.mxr.lowering import Bucket, LoweringError
from pagedc.mxr.standard import lower_standard, standard_sites
from pagedc.runtime.sessions.standard_cache import StandardKVCache
from tests.compiler.mxr_harness import standard_manifest
from tests.conftest import PAGED_ATOL
from tests.paged_harness import DenseRunner

MAX_CONTEXT = 20
PROMPTS = [[5, 17, 3, 9, 60], [2, 4, 6, 8, 10, 12, 14, 16]]
DECODE = [[11, 12, 13], [21, 22, 23]]


def _standard(dense, tmp_path, buckets):
    return standard_manifest(dense, tmp_path, buckets, MAX_CONTEXT)


# ORT's GroupQueryAttention takes a multi-token step over a past buffer only at batch 1 ("batch_size must be 1
# when sequence_length > 1 and past context is given"), so gqa is proven at B=1 here; MIGraphX's parser builds
# the batched case too (parse_group_query_attention.cpp), unverified without MIGraphX.
@pytest.mark.parametrize("form,prompt_ids,batch", [
    ("decomposed", [0, 1], 2), ("decomposed", [0], 2),     # [0]: the bucket's second row is a dummy
    ("gqa", [0], 1), ("gqa", [1], 1),                      # [1]: the prompt fills the prefill bucket exactly
])
def test_static_standard_models_match_the_dense_model(dense_model, tmp_path, form, prompt_ids, batch):
    dense = dense_model(form)
    manifest, runners = _standard(dense, tmp_path, [Bucket("prefill", batch, 8), Bucket("decode", batch, 1)])
    assert manifest.standard["kv"] == {"gqa": "shared_buffer", "decomposed": "static_past"}[form]
    prompts, decode = [PROMPTS[i] for i in prompt_ids], [DECODE[i] for i in prompt_ids]
    cache = StandardKVCache(manifest, batch=len(prompts))
    got = [[] for _ in prompts]
    for tokens in [prompts] + [[d[i : i + 1] for d in decode] for i in range(3)]:
        artifact, feeds = cache.feeds(tokens)
        outputs = dict(zip(artifact.outputs, runners[artifact.path](feeds)))
        cache.update(artifact, outputs)
        for b, row in enumerate(tokens):
            got[b].append(outputs["logits"][b, : len(row)])
    for b, (prompt, new) in enumerate(zip(prompts, decode)):
        want = DenseRunner(dense).run(prompt + new, [len(prompt), 1, 1, 1])
        for step_got, step_want in zip(got[b], want):
            np.testing.assert_allclose(step_got, step_want, atol=PAGED_ATOL, rtol=0)


def test_gqa_standard_models_are_trimmed_and_share_one_buffer(dense_model):
    model = load_model(dense_model("gqa"))
    sites = standard_sites(model)
    static, shapes = lower_standard(model, sites, Bucket("prefill", 1, 8), MAX_CONTEXT)
    gqa = [n for n in static.graph if n.op_type == "GroupQueryAttention"]
    assert [len(n.inputs) for n in gqa] == [9, 9]
    # MIGraphX broadcasts seqlens_k to [B, num_heads]: a [B] input fails at B > 1, [B, 1] does not
    assert [list(n.inputs[5].shape) for n in gqa] == [[1, 1], [1, 1]]
    assert gqa[0].inputs[5].producer().op_type == "Unsqueeze"
    assert shapes["attention_mask"] == [1, MAX_CONTEXT]
    assert shapes[sites[0].past_key] == [1, 2, MAX_CONTEXT, 16]          # [B, Hkv, M, Dh]


def test_decomposed_standard_prefill_has_an_empty_past(dense_model):
    model = load_model(dense_model("decomposed"))
    sites = standard_sites(model)
    _, prefill = lower_standard(model, sites, Bucket("prefill", 1, 8), MAX_CONTEXT)
    _, decode = lower_standard(model, sites, Bucket("decode", 1, 1), MAX_CONTEXT)
    assert (prefill[sites[0].past_key], prefill["attention_mask"]) == ([1, 2, 0, 16], [1, 8])
    assert (decode[sites[0].past_key], decode["attention_mask"]) == ([1, 2, MAX_CONTEXT - 1, 16], [1, MAX_CONTEXT])


def test_standard_cache_refuses_a_step_past_max_context(dense_model, tmp_path):
    manifest, runners = _standard(dense_model("gqa"), tmp_path, [Bucket("prefill", 1, 8), Bucket("decode", 1, 1)])
    cache = StandardKVCache(manifest, batch=1)
    steps = [[list(range(1, 9))]] + [[[7]]] * (MAX_CONTEXT - 8)       # 8 + 12 tokens: the buffer is full
    for tokens in steps:
        artifact, feeds = cache.feeds(tokens)
        cache.update(artifact, dict(zip(artifact.outputs, runners[artifact.path](feeds))))
    with pytest.raises(ValueError, match=f"a step would reach {MAX_CONTEXT + 1} tokens; the standard artifacts "
                                         f"hold {MAX_CONTEXT}"):
        cache.feeds([[4]])


def test_a_model_with_an_unplaced_kv_input_cannot_emit_standard(dense_model):
    model = load_model(dense_model("decomposed", sliding_window=3))
    sites = standard_sites(model)                   # sliding windows are fine for the dense model itself
    assert len(sites) == 2
    dims = [ir.SymbolicDim("batch_size"), 2, ir.SymbolicDim("past_sequence_length"), 16]
    model.graph.inputs.append(ir.Value(name="past_key_values.9.key", type=ir.TensorType(ir.DataType.FLOAT),
                                       shape=ir.Shape(dims)))
    with pytest.raises(LoweringError, match="cannot place the dense model's KV inputs"):
        standard_sites(model)
