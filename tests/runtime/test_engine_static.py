"""The engine on static shape buckets (the MIGraphX layout), run by ONNX Runtime over the lowered graphs.

The scheduler must keep every run inside a bucket (batch, prefill length), the
session pads and carries pools: greedy tokens still equal the dense loop.
"""

from __future__ import annotations

import pytest

from pagedc.mxr.lowering import Bucket
from pagedc.runtime import Engine, EngineOptions
from tests.compiler.mxr_harness import static_paged_session
from tests.paged_harness import DenseRunner

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [12, 13], [3] * 9, [40, 41, 42, 43, 44], [7, 7, 8]]


@pytest.mark.parametrize("layout", ["separate", "combined"])
@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_engine_on_static_buckets_matches_the_dense_loop(dense_model, tmp_path, form, layout):
    dense = dense_model(form)
    buckets = [Bucket("prefill", 2, 8), Bucket("decode", 1, 1), Bucket("decode", 4, 1)]
    session = static_paged_session(dense, tmp_path, buckets, layout=layout, block_size=4, num_blocks=48,
                                   max_context=32)
    engine = Engine(session.manifest, tmp_path, engine_options=EngineOptions(max_num_seqs=16), session=session)
    assert engine.scheduler.max_num_seqs == 4 and engine.scheduler.max_prefill_len == 8
    tokens = engine.generate(PROMPTS, max_new_tokens=12)
    runner = DenseRunner(dense)
    assert tokens == [runner.greedy(p, 12) for p in PROMPTS]
    assert engine.manager.stats()["blocks_used"] == 0


def test_requests_stop_at_the_compiled_context(dense_model, tmp_path):
    session = static_paged_session(dense_model("gqa"), tmp_path, [Bucket("prefill", 1, 8), Bucket("decode", 1, 1)],
                                   layout="separate", block_size=4, num_blocks=48, max_context=16)
    engine = Engine(session.manifest, tmp_path, session=session)
    [tokens] = engine.generate([[1, 2, 3, 4]], max_new_tokens=16)
    assert tokens == DenseRunner(dense_model("gqa")).greedy([1, 2, 3, 4], 12)        # 4 + 12 = max_context
    assert engine.requests[0].finish_reason == "length"
    with pytest.raises(ValueError, match=r"prompt 0 has 17 tokens, more than the 16 this engine runs per sequence: "
                                         r"the compiled buckets span 16 tokens \(recompile with a larger --max-context\)"):
        engine.generate([list(range(1, 18))], max_new_tokens=1)


def test_prompt_chunks_default_to_the_largest_prefill_bucket(dense_model, tmp_path):
    """With static buckets a chunk shorter than a bucket would be padded up to it: the default chunk is the
    largest prefill bucket (not ONNX Runtime's 256), and a max_prefill_chunk below it is kept as asked."""
    session = static_paged_session(dense_model("gqa"), tmp_path, [Bucket("prefill", 1, 4), Bucket("prefill", 1, 8),
                                   Bucket("decode", 1, 1)], layout="separate", block_size=4, num_blocks=48,
                                   max_context=32)
    limits = {chunk: Engine(session.manifest, tmp_path, engine_options=EngineOptions(max_prefill_chunk=chunk),
                            session=session).scheduler.max_prefill_len for chunk in (None, 5, 100)}
    assert limits == {None: 8, 5: 5, 100: 8}
    engine = Engine(session.manifest, tmp_path, engine_options=EngineOptions(max_prefill_chunk=4), session=session)
    assert engine.generate([PROMPTS[0]], max_new_tokens=3) == [DenseRunner(dense_model("gqa")).greedy(PROMPTS[0], 3)]
    assert engine.times.prefill.num_steps == 3                                        # 11 tokens: 4 + 4 + 3
