"""Tier 3: real exporter outputs (onnxruntime-genai builder, optimum-onnx, torch.onnx dynamo, transformers'
OnnxExporter; Llama, Qwen2, Qwen3, Phi-3, GPT-2, sliding-window Mistral) paged exactly."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.model_file import load_model
from pagedc.passes.detect import find_attention_sites
from pagedc.passes.site import Mask
from pagedc.runtime.feeds import SequenceStep
from tests.conftest import EXPORTS, PAGED_ATOL, paged_copy
from tests.paged_harness import DenseRunner, PagedRunner, blocks_for, shuffled_blocks

BLOCK_SIZE, NUM_BLOCKS, VOCAB = 4, 48, 1000
# (heads, KV heads, head dim, has rotary) of the tiny models tests/exporters/make_hf_model.py builds
SHAPES = {"llama": (4, 2, 32, True), "qwen2": (4, 2, 32, True), "phi3": (4, 2, 32, True), "gpt2": (4, 4, 32, False),
          "qwen3": (4, 2, 32, True), "mistral": (4, 2, 32, True)}
MASKS = {"mistral": Mask.sliding_window(5)}  # make_hf_model.SLIDING_WINDOW; the others are causal
FUSED = {"genai", "transformers-b1"}     # exporters whose attention is one GroupQueryAttention op
BATCH_ONE = {"transformers-b1"}          # exports whose batch is specialised to 1


@pytest.mark.parametrize("arch,exporter", EXPORTS)
def test_every_layer_of_every_export_is_found(exported_model_factory, arch, exporter):
    detection = find_attention_sites(load_model(exported_model_factory(arch, exporter)))
    assert detection.misses == []
    heads, kv_heads, head_dim, has_rotary = SHAPES[arch]
    assert [(s.layer, s.num_heads, s.num_kv_heads, s.head_dim, s.mask) for s in detection.sites] == [
        (i, heads, kv_heads, head_dim, MASKS.get(arch, Mask.causal())) for i in range(2)]
    expected_form = "gqa" if exporter in FUSED else "decomposed"
    assert {s.form for s in detection.sites} == {expected_form}
    assert all((s.rotary != "none") == has_rotary for s in detection.sites)


@pytest.mark.parametrize("layout", ["separate", "combined"])
@pytest.mark.parametrize("arch,exporter", EXPORTS)
def test_paged_export_matches_dense_export(exported_model_factory, tmp_path, arch, exporter, layout):
    dense_path = exported_model_factory(arch, exporter)
    # fuse_rotary as the ONNX Runtime target compiles (genai's GQA rotary -> RotaryEmbedding); the MIGraphX
    # lowering's plain-op rotary is checked on these exports in tests/compiler/test_mxr_exporters.py
    paged_path, report = paged_copy(dense_path, tmp_path, block_size=BLOCK_SIZE, layout=layout, fuse_rotary=True)
    assert report.num_layers == 2
    prompt_lens, decode_steps = (9, 4, 6), 8
    rng = np.random.default_rng(1)
    sequences = [[int(t) for t in rng.integers(1, VOCAB, n + decode_steps)] for n in prompt_lens]
    dense = DenseRunner(dense_path)
    expected = [dense.run(seq, [n] + [1] * decode_steps) for seq, n in zip(sequences, prompt_lens)]
    paged = PagedRunner(paged_path, NUM_BLOCKS, BLOCK_SIZE, layout)
    free = shuffled_blocks(NUM_BLOCKS, seed=3)
    blocks = [{"key_blocks": blocks_for(free, n + decode_steps, BLOCK_SIZE),
               "value_blocks": blocks_for(free, n + decode_steps, BLOCK_SIZE) if layout == "combined" else None}
              for n in prompt_lens]
    # One ragged batch; a batch-1 export takes the sequences one at a time (on the same shuffled pools).
    batches = [[b] for b in range(len(prompt_lens))] if exporter in BATCH_ONE else [list(range(len(prompt_lens)))]
    diffs = []
    for rows in batches:
        logits = paged.step([sequences[b][:prompt_lens[b]] for b in rows],
                            [SequenceStep(positions=list(range(prompt_lens[b])), **blocks[b]) for b in rows])
        diffs += [float(np.max(np.abs(logits[i, :prompt_lens[b]] - expected[b][0]))) for i, b in enumerate(rows)]
        for t in range(decode_steps):
            logits = paged.step([[sequences[b][prompt_lens[b] + t]] for b in rows],
                                [SequenceStep(positions=[prompt_lens[b] + t], **blocks[b]) for b in rows])
            diffs += [float(np.max(np.abs(logits[i, 0] - expected[b][1 + t][0]))) for i, b in enumerate(rows)]
    assert max(diffs) <= PAGED_ATOL, f"max abs diff {max(diffs):.3g} over prefill and {decode_steps} decode steps"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_ort_fused_dynamo_exports_page_exactly(exported_model_factory, tmp_path, arch):
    """onnxscript's optimize_for_ort turns a dynamo export's attention into GroupQueryAttention (rotary inside);
    the paged rewrite of that fused graph still computes the unfused export's logits."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    from pagedc.build import CompileOptions, compile_model
    from pagedc.verify import verify

    source = exported_model_factory(arch, "dynamo")
    model = load_model(source)
    optimize_for_ort(model)
    fused = tmp_path / "fused.onnx"
    ir.save(model, str(fused), external_data="fused.onnx.data")
    assert {s.form for s in find_attention_sites(load_model(fused)).sites} == {"gqa"}
    compile_model(fused, tmp_path / "paged", CompileOptions(block_size=8, num_blocks=64, logits="all"))
    report = verify(tmp_path / "paged", source, batch=3, decode_steps=6)
    assert report.passed, [(s.step, s.max_abs) for s in report.steps]
