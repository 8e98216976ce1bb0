"""A tiny served model: a reference decoder whose vocabulary is a byte-level BPE tokenizer trained here."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="pagedc serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("openai", reason="the serve tests talk to the server with the openai package (test extra)")

import onnx  # noqa: E402

from pagedc.build import CompileOptions, compile_model  # noqa: E402
from pagedc.testing import DecoderConfig, build_decoder  # noqa: E402
from pagedc.testing.tokenizer import write_tokenizer_files  # noqa: E402

BLOCK_SIZE = 4
NUM_BLOCKS = 257             # 256 usable: 1024 tokens in the pool


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """A compiled directory with tokenizer.json, tokenizer_config.json (ChatML template) and
    generation_config.json copied by `compile` from beside the source model."""
    source_dir = tmp_path_factory.mktemp("served-source")
    vocab_size = write_tokenizer_files(source_dir)
    config = DecoderConfig(vocab_size=vocab_size, max_position_embeddings=2048)
    onnx.save(build_decoder(config, "gqa"), str(source_dir / "tiny.onnx"))
    out = tmp_path_factory.mktemp("served") / "tiny.paged"
    compile_model(source_dir / "tiny.onnx", out, CompileOptions(block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS))
    return out
