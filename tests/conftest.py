"""Shared fixtures and the one tolerance table of the suite."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from pagedc.model_file import load_model
from pagedc.passes.paged import rewrite_to_paged
from pagedc.testing.build import build_decoder
from pagedc.testing.config import DecoderConfig

# fp32 rewrites are algebraically exact up to summation order; fp16 is not.
TOLERANCES = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float16": {"rtol": 2e-2, "atol": 2e-2},
}
# Paged vs dense logits on real-size graphs: masked positions add exact zeros,
# but MatMul blocking over a longer context changes summation order.
PAGED_ATOL = 1e-4


@pytest.fixture(scope="session")
def dense_model(tmp_path_factory):
    """dense_model(form, **config) -> path of a reference decoder, built once per session."""
    cache: dict = {}

    def build(form: str, **config) -> Path:
        key = (form, tuple(sorted(config.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp("dense") / f"{form}.onnx"
            onnx.save(build_decoder(DecoderConfig(**config), form), str(path))
            cache[key] = path
        return cache[key]

    return build


def paged_copy(dense: Path, out_dir: Path, **options) -> tuple[Path, object]:
    """Rewrite `dense` to paged and save it under out_dir; returns (path, report)."""
    model, report = rewrite_to_paged(load_model(dense), **options)
    path = out_dir / f"{dense.stem}.paged.{options.get('layout', 'separate')}.onnx"
    ir.save(model, str(path))
    return path, report
