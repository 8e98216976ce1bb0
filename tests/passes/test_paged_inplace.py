"""The pool update is in place under IOBinding, and padding writes only the null block."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pagedc.runtime.feeds import SequenceStep, step_feeds
from tests.conftest import paged_copy
from tests.paged_harness import session

BLOCK_SIZE = 4
NUM_BLOCKS = 12


def _ragged_steps(layout: str) -> list[SequenceStep]:
    """Two sequences, 6 and 3 new tokens: the second has 3 padding tokens, the table has padded entries."""
    split = layout == "combined"
    return [
        SequenceStep(key_blocks=[9, 4], positions=list(range(6)), value_blocks=[2, 11] if split else None),
        SequenceStep(key_blocks=[6], positions=[0, 1, 2], value_blocks=[7] if split else None),
    ]


def _bind(sess: ort.InferenceSession, feeds: dict, pools: dict[str, np.ndarray]) -> ort.IOBinding:
    binding = sess.io_binding()
    for name, pool in pools.items():  # pool outputs bound first: get_outputs() follows bind order
        value = ort.OrtValue.ortvalue_from_numpy(pool)
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(name.replace("_cache.", "_cache_out."), value)
    for inp in sess.get_inputs():
        if inp.name in feeds:
            binding.bind_cpu_input(inp.name, feeds[inp.name])
    binding.bind_output("logits")
    return binding


def _pools(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal((NUM_BLOCKS, *i.shape[1:])).astype(np.float32)
            for i in sess.get_inputs() if "_cache." in i.name}


def _written_slots(feeds: dict, steps: list[SequenceStep], layout: str) -> list[set[int]]:
    """Per slot_mapping row, the slots of real (non-padding) tokens."""
    seq_len = feeds["position_ids"].shape[1]
    rows = feeds["slot_mapping"].reshape(2 if layout == "combined" else 1, -1)
    return [{int(row[b * seq_len + s]) for b, st in enumerate(steps) for s in range(len(st.positions))} for row in rows]


@pytest.mark.parametrize("layout", ["separate", "combined"])
@pytest.mark.parametrize("form", ["decomposed", "gqa", "attention", "mha"])
def test_pools_update_in_place_and_padding_only_touches_null_block(dense_model, tmp_path, form, layout):
    path, _ = paged_copy(dense_model(form), tmp_path, block_size=BLOCK_SIZE, layout=layout)
    sess = session(path)
    steps = _ragged_steps(layout)
    feeds = step_feeds(steps, BLOCK_SIZE, layout=layout, max_blocks=3)
    feeds["input_ids"] = np.ones(feeds["position_ids"].shape, np.int64)
    pools = _pools(sess)
    before = {name: pool.copy() for name, pool in pools.items()}
    binding = _bind(sess, feeds, pools)
    sess.run_with_iobinding(binding)

    for name, out in zip(pools, binding.get_outputs()):
        assert out.data_ptr() == pools[name].ctypes.data, f"{name}: the run wrote a new buffer, not the bound pool"
    allowed = set().union(*_written_slots(feeds, steps, layout))
    for name, pool in pools.items():
        changed = np.nonzero(np.any((pool != before[name]).reshape(NUM_BLOCKS, -1, BLOCK_SIZE, pool.shape[-1]),
                                    axis=(1, 3)))
        changed_slots = {int(b) * BLOCK_SIZE + int(o) for b, o in zip(*changed)}
        outside = {s for s in changed_slots - allowed if s // BLOCK_SIZE != 0}
        assert not outside, f"{name}: slots {sorted(outside)} changed outside the written slots and block 0"
        assert allowed & changed_slots, f"{name}: the pool bound in place was not updated"
        assert (changed_slots - allowed) <= set(range(BLOCK_SIZE)), f"{name}: padding wrote outside block 0"
