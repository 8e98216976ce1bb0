"""runtime.buckets: exact padding (zeros = null block, context 0, position 0), bucket choice, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pagedc.manifest import Artifact
from pagedc.manifest import Bucket
from pagedc.runtime.sessions.buckets import BucketError, pad_feeds, select_artifact, step_shape, unpad_logits
from pagedc.runtime.feeds import SequenceStep, step_feeds

I32, I64 = "int32", "int64"


def _artifact(phase: str, batch: int, seq: int, max_blocks: int, combined: bool = False) -> Artifact:
    table = [batch, 2, max_blocks] if combined else [batch, max_blocks]
    slots = [2, batch * seq] if combined else [batch * seq]
    inputs = {"input_ids": [batch, seq], "position_ids": [batch, seq], "block_table": table,
              "slot_mapping": slots, "context_lens": [batch], "key_cache.0": [16, 2, 4, 8]}
    dtypes = {"input_ids": I64, "position_ids": I64, "block_table": I32, "slot_mapping": I32,
              "context_lens": I32, "key_cache.0": "float32"}
    return Artifact(f"{phase}_b{batch}_s{seq}.mxr", phase, inputs, dtypes, ["logits", "key_cache_out.0"])


def test_worked_example_from_the_module_docstring():
    feeds = step_feeds([SequenceStep([7, 2], [5])], block_size=4)
    feeds["input_ids"] = np.array([[42]])
    padded = pad_feeds(feeds, _artifact("decode", 2, 1, 3))
    np.testing.assert_array_equal(padded["block_table"], [[7, 2, 0], [0, 0, 0]])
    np.testing.assert_array_equal(padded["slot_mapping"], [9, 0])
    np.testing.assert_array_equal(padded["context_lens"], [6, 0])
    np.testing.assert_array_equal(padded["position_ids"], [[5], [0]])
    np.testing.assert_array_equal(padded["input_ids"], [[42], [0]])
    assert {k: v.dtype.name for k, v in padded.items()} == {"block_table": I32, "slot_mapping": I32,
                                                            "context_lens": I32, "position_ids": I64, "input_ids": I64}


def test_token_columns_pad_row_major_slots():
    # two sequences of 2 and 1 new tokens (S=2) into a [3, 4] bucket: slots stay row-major over (b, s)
    feeds = step_feeds([SequenceStep([3], [0, 1]), SequenceStep([5], [2])], block_size=4)
    np.testing.assert_array_equal(feeds["slot_mapping"], [12, 13, 22, 3])    # row 1 padding: null block slot 3
    padded = pad_feeds(feeds, _artifact("prefill", 3, 4, 2))
    np.testing.assert_array_equal(padded["slot_mapping"], [12, 13, 0, 0, 22, 3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(padded["position_ids"], [[0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])


def test_combined_layout_pads_both_rows():
    steps = [SequenceStep([3], [0, 1], value_blocks=[6])]
    feeds = step_feeds(steps, block_size=4, layout="combined")
    padded = pad_feeds(feeds, _artifact("prefill", 2, 3, 2, combined=True))
    np.testing.assert_array_equal(padded["slot_mapping"], [[12, 13, 0, 0, 0, 0], [24, 25, 0, 0, 0, 0]])
    np.testing.assert_array_equal(padded["block_table"], [[[3, 0], [6, 0]], [[0, 0], [0, 0]]])


def test_padding_never_emits_a_negative_index():
    feeds = step_feeds([SequenceStep([1, 2, 3], list(range(9)))], block_size=4)
    padded = pad_feeds(feeds, _artifact("prefill", 4, 16, 6))
    assert all((v >= 0).all() for v in padded.values())


def test_the_smallest_fitting_bucket_is_chosen():
    artifacts = [_artifact("prefill", 4, 64, 8), _artifact("prefill", 1, 64, 8), _artifact("decode", 4, 1, 8),
                 _artifact("decode", 1, 1, 8), _artifact("prefill", 1, 16, 8)]
    pick = lambda b, s: select_artifact(artifacts, Bucket("decode" if s == 1 else "prefill", b, s, 3)).path
    assert pick(1, 1) == "decode_b1_s1.mxr"
    assert pick(3, 1) == "decode_b4_s1.mxr"
    assert pick(1, 9) == "prefill_b1_s16.mxr"
    assert pick(2, 9) == "prefill_b4_s64.mxr"


def test_a_step_no_bucket_fits_says_what_to_do():
    artifacts = [_artifact("prefill", 1, 16, 8), _artifact("decode", 1, 1, 8)]
    with pytest.raises(BucketError, match=r"no static bucket fits a step of \[B=1, S=17, max_blocks=2\]; "
                                          r"the artifacts are: prefill \[B=1, S=16, max_blocks=8\]"):
        select_artifact(artifacts, Bucket("prefill", 1, 17, 2))
    with pytest.raises(BucketError, match="--max-context"):
        select_artifact(artifacts, Bucket("decode", 1, 1, 9))


def test_step_shape_and_unpad():
    feeds = step_feeds([SequenceStep([7, 2], [4, 5]), SequenceStep([3], [0])], block_size=4)
    step = step_shape(feeds)
    assert step == Bucket("prefill", 2, 2, 2)
    logits = np.arange(4 * 8 * 3).reshape(4, 8, 3)
    assert unpad_logits(logits, step).shape == (2, 2, 3)
    np.testing.assert_array_equal(unpad_logits(logits, step), logits[:2, :2])
