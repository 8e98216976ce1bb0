"""Shared fixtures and the one tolerance table of the suite."""

from __future__ import annotations

import contextlib
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from pagedc.model_file import load_model
from pagedc.passes.paged import rewrite_to_paged
from pagedc.testing import DecoderConfig, build_decoder
from tests.exporters.fixtures import BATCH_ONE, CASES, ExporterUnavailable, exported_model

EXPORTS = list(CASES)   # every (arch, exporter) pair the fixtures build
# The exports whose graphs take a batch of several sequences (not specialised to batch 1).
BATCHED_EXPORTS = [(a, e) for a, e in EXPORTS if e not in BATCH_ONE]

# The suite's one tolerance table.
#
# ORT (CPU) vs reference_forward (NumPy float32), max abs difference.
# float32: the graphs compute the reference's algebra; measured max 2e-6 over
#   all forms/variants, so 1e-4 leaves 50x headroom and still catches any
#   real mistake (a wrong mask entry or RoPE position moves logits by ~1e-1).
# float16: weights, activations and KV are fp16 in ORT, float32 in NumPy. fp16
#   spacing is 2e-3 at |x| in [2, 4) and 3.9e-3 in [4, 8); presents reach 4.3
#   and logits 3.5. Measured max 3.7e-3 (presents) / 1.9e-3 (logits) over 5
#   seeds, on real tokens only (fully masked padding rows use fp16's own
#   finfo.min and are not comparable). Tolerance: 1e-2 abs + 1e-2 rel.
TOLERANCE = {
    "float32": {"atol": 1e-4, "rtol": 0.0},
    "float16": {"atol": 1e-2, "rtol": 1e-2},
}
# Paged vs dense logits (fp32): the rewrite is algebraically exact; masked keys
# add exact zeros, but MatMul blocking over a longer context changes the
# summation order.
PAGED_ATOL = 1e-4
# Last-token logits (--logits last) vs the same rows of the all-positions paged model, fp32: the same ops on
# the same values, the lm_head MatMul over [B, 1, D] instead of [B, S, D]. Measured 0.0 (ORT, optimizations
# off, every form and layout); the fp32 tight tier leaves room for a kernel that blocks M=1 differently.
LAST_LOGITS_TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture
def tolerance():
    return TOLERANCE


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory):
    """dense_model(form, **config) -> path of a reference decoder, built once per session."""
    cache: dict = {}

    def build(form: str, **config) -> Path:
        if form == "mha":   # MultiHeadAttention has no GQA
            config.setdefault("num_kv_heads", config.get("num_heads", DecoderConfig.num_heads))
        key = (form, tuple(sorted(config.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp("dense") / f"{form}.onnx"
            onnx.save(build_decoder(DecoderConfig(**config), form), str(path))
            cache[key] = path
        return cache[key]

    return build


@pytest.fixture(scope="session")
def bias_mask_model(tmp_path_factory, dense_model):
    """The GroupQueryAttention reference decoder with an `attention_bias` graph input on every layer:
    a mask pagedc cannot page (it would be silently replaced)."""
    model = onnx.load(str(dense_model("gqa")))
    bias = onnx.helper.make_tensor_value_info("attention_bias", onnx.TensorProto.FLOAT,
                                              ["batch_size", 1, "sequence_length", "total_sequence_length"])
    model.graph.input.append(bias)
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.input[10] = "attention_bias"
    path = tmp_path_factory.mktemp("bias") / "bias.onnx"
    onnx.save(model, str(path))
    return path


def paged_copy(dense: Path, out_dir: Path, **options) -> tuple[Path, object]:
    """Rewrite `dense` to paged and save it under out_dir; returns (path, report)."""
    model, report = rewrite_to_paged(load_model(dense), **options)
    path = out_dir / f"{dense.stem}.paged.{options.get('layout', 'separate')}.onnx"
    ir.save(model, str(path), external_data=path.name + ".data")
    return path, report


@pytest.fixture(scope="session")
def exported_model_factory(request):
    """(arch, exporter) -> model.onnx of a real exporter (tests/exporters/fixtures.py), built once and cached.

    Skips with the reason when the exporter cannot be installed or run here
    (ExporterUnavailable); a failed numeric check of the export fails the test.
    Build progress (first use takes ~2 minutes) goes to the terminal live.
    """
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def get(arch: str, exporter: str) -> Path:
        live = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        try:
            with live:
                return exported_model(arch, exporter)
        except ExporterUnavailable as err:
            pytest.skip(f"{arch}/{exporter} export unavailable: {err.reason}")

    return get
