"""The bench's timing loop and its sides over static buckets (lowered artifacts run by ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.bench.sides import BenchOptions, PagedSide, StaticStandardSide
from pagedc.bench.timer import measure
from pagedc.mxr.lowering import Bucket
from tests.compiler.mxr_harness import standard_manifest, static_paged_session

BUCKETS = [Bucket("prefill", 2, 8), Bucket("decode", 2, 1)]


def test_rounds_alternate_sides_and_prepare_runs_untimed_before_each():
    calls = []
    stats = measure({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
                    repeats=2, warmup=1, steps_per_round=2, prepare={"b": lambda: calls.append(("b", "prepare"))},
                    tokens_per_step={"a": 8})
    one_round = [("a", 0), ("a", 1), ("b", "prepare"), ("b", 0), ("b", 1)]
    assert calls == one_round * 3                      # 1 warm-up + 2 timed rounds
    assert (stats["a"].num_steps, stats["b"].num_steps) == (4, 4)
    assert (stats["a"].tokens_per_step, stats["b"].tokens_per_step) == (8, 1)


def test_measure_refuses_no_rounds():
    with pytest.raises(ValueError, match="repeats and steps_per_round must be >= 1"):
        measure({"a": lambda i: None}, repeats=0)


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_paged_side_steps_run_in_the_buckets(dense_model, tmp_path, layout):
    """Context prefill in chunks of the longest prefill bucket, then decode steps in the decode bucket."""
    session = static_paged_session(dense_model("gqa"), tmp_path, BUCKETS, layout=layout, block_size=4,
                                   num_blocks=64, max_context=32)
    options = BenchOptions(prefill_len=8, batch=2, decode_steps=3, context=19)
    side = PagedSide(session.manifest, session, options, context_chunk=8)
    side.reset()
    side.prefill(0)
    assert session.last_artifact.path == "prefill_b2_s8.onnx"
    side.setup_decode()                                     # 19 tokens: chunks 8, 8, 3
    for _ in range(2):                                      # two rounds replay the same steps
        side.rewind()
        for step in range(3):
            side.decode(step)
            assert session.last_artifact.path == "decode_b2.onnx"
    assert [int(f["context_lens"][0]) for f in side._decode] == [20, 21, 22]
    tables = side._decode[-1]["block_table"]
    assert len(np.unique(tables[tables > 0])) == int((tables > 0).sum())   # no block shared by the sequences


# gqa at batch 1: ORT's GroupQueryAttention refuses a multi-token step over a past buffer at batch > 1
@pytest.mark.parametrize("form,batch", [("gqa", 1), ("decomposed", 2)])
def test_standard_side_rewinds_to_the_context(dense_model, tmp_path, form, batch):
    buckets = [Bucket("prefill", batch, 8), Bucket("decode", batch, 1)]
    manifest, runners = standard_manifest(dense_model(form), tmp_path, buckets, 32)
    side = StaticStandardSide(manifest, runners, BenchOptions(prefill_len=8, batch=batch, decode_steps=3, context=6))
    side.reset()
    side.prefill(0)
    assert list(side.cache.num_tokens) == [8] * batch
    side.setup_decode()
    for _ in range(2):
        side.rewind()
        assert list(side.cache.num_tokens) == [6] * batch
        for step in range(3):
            side.decode(step)
        assert list(side.cache.num_tokens) == [9] * batch
