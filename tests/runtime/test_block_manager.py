"""PagedKVCacheManager: exact small cases and a seeded stateful test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagedc.runtime import PagedKVCacheManager, SequenceStep, step_feeds


def test_blocks_come_from_the_free_list_in_order_and_skip_the_null_block():
    manager = PagedKVCacheManager(num_blocks=8, block_size=4)
    manager.add("a")
    assert manager.append("a", 6).slots(4).tolist() == [4, 5, 6, 7, 8, 9]       # blocks [1, 2]
    manager.add("b")
    assert manager.append("b", 1).slots(4).tolist() == [12]                      # block 3
    assert manager.append("a", 3).slots(4).tolist() == [10, 11, 16]              # fills block 2, takes block 4
    assert manager.block_ids("a") == ([1, 2, 4], None)
    manager.check_invariants()


def test_step_feeds_worked_example():
    """block_size=4, blocks [7, 2]: positions 4, 5 are slots 8, 9 (DESIGN.md §3)."""
    steps = [SequenceStep(key_blocks=[7, 2], positions=[4, 5]), SequenceStep(key_blocks=[1], positions=[0])]
    feeds = step_feeds(steps, block_size=4)
    assert feeds["block_table"].tolist() == [[7, 2], [1, 0]]
    assert feeds["slot_mapping"].tolist() == [8, 9, 4, 3]                 # b's padding token -> block 0
    assert feeds["context_lens"].tolist() == [6, 1]
    assert feeds["position_ids"].tolist() == [[4, 5], [0, 0]]
    padded = step_feeds(steps[:1], block_size=4, num_tokens=3, max_blocks=4, batch=2)
    assert padded["block_table"].tolist() == [[7, 2, 0, 0], [0, 0, 0, 0]]
    assert padded["slot_mapping"].tolist() == [8, 9, 2, 3, 0, 1]
    assert padded["context_lens"].tolist() == [6, 0]


def test_appends_are_the_step_and_feed_it():
    """append returns the sequence's part of the step; step_feeds lays a batch of them out, input_ids included."""
    manager = PagedKVCacheManager(num_blocks=8, block_size=4)
    for seq, count in (("a", 6), ("b", 1)):
        manager.add(seq)
        manager.append(seq, count)
    step_a = manager.append("a", 1, [42])
    assert (step_a.key_blocks, step_a.positions, step_a.token_ids) == ([1, 2], [6], (42,))
    feeds = step_feeds([step_a, manager.append("b", 2, [5, 6])], block_size=4)
    assert feeds["block_table"].tolist() == [[1, 2], [3, 0]]
    assert feeds["position_ids"].tolist() == [[6, 0], [1, 2]]
    assert feeds["slot_mapping"].tolist() == [10, 1, 13, 14]            # a's padding token (flat index 1) -> slot 1, block 0
    assert feeds["context_lens"].tolist() == [7, 3]
    assert feeds["input_ids"].tolist() == [[42, 0], [5, 6]]             # padding is token 0


def test_step_feeds_refuse_the_null_block_and_short_tables():
    with pytest.raises(ValueError, match="uses the null block 0"):
        step_feeds([SequenceStep(key_blocks=[0], positions=[0])], block_size=4)
    with pytest.raises(ValueError, match="reaches position 4 but has only 1 block"):
        step_feeds([SequenceStep(key_blocks=[3], positions=[4])], block_size=4)


def test_combined_layout_takes_separate_k_and_v_blocks():
    manager = PagedKVCacheManager(num_blocks=9, block_size=2, layout="combined")
    manager.add(0)
    step = manager.append(0, 3)
    assert step.slots(2).tolist() == [[2, 3, 6], [4, 5, 8]]              # K blocks [1, 3], V blocks [2, 4]
    feeds = step_feeds([step], block_size=2, layout="combined")
    assert feeds["block_table"].tolist() == [[[1, 3], [2, 4]]]
    assert feeds["slot_mapping"].tolist() == [[2, 3, 6], [4, 5, 8]]
    assert manager.blocks_needed(0, 1) == 0 and manager.blocks_needed(0, 2) == 1   # one (K, V) unit
    manager.check_invariants()


def test_running_out_is_an_answer_not_an_error():
    manager = PagedKVCacheManager(num_blocks=3, block_size=4)
    manager.add("a")
    manager.append("a", 8)
    manager.add("b")
    assert manager.can_append("a", 0) and not manager.can_append("b", 1)
    with pytest.raises(RuntimeError, match="needs 1 free block"):
        manager.append("b", 1)
    assert manager.num_tokens("b") == 0
    manager.free("a")
    assert manager.can_append("b", 8)
    manager.check_invariants()


def test_user_errors_say_what_and_how_much():
    manager = PagedKVCacheManager(num_blocks=5, block_size=4)
    manager.add("a")
    with pytest.raises(ValueError, match="already in the cache"):
        manager.add("a")
    with pytest.raises(KeyError, match="unknown sequence 'zz'"):
        manager.append("zz", 1)
    with pytest.raises(ValueError, match="would hold 17 tokens; the pool of 5 blocks x 4 tokens holds at most 16"):
        manager.append("a", 17)
    with pytest.raises(ValueError, match="num_blocks must be an int >= 2, got 1"):
        PagedKVCacheManager(num_blocks=1, block_size=4)


def test_stats_report_usage_and_fragmentation():
    manager = PagedKVCacheManager(num_blocks=10, block_size=4)
    manager.add("a")
    manager.append("a", 5)
    stats = manager.stats()
    assert (stats["blocks_used"], stats["blocks_free"], stats["tokens_stored"]) == (2, 7, 5)
    assert stats["fragmentation"] == pytest.approx(8 / 5)


class ManagerMachine(RuleBasedStateMachine):
    """Random add/append/free; invariants after every step, nothing leaks at the end."""

    def __init__(self):
        super().__init__()
        self.manager = PagedKVCacheManager(num_blocks=24, block_size=4, layout="separate")
        self.tokens: dict[int, int] = {}
        self.next_id = 0

    @rule()
    def add(self):
        self.manager.add(self.next_id)
        self.tokens[self.next_id] = 0
        self.next_id += 1

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), count=st.integers(1, 9))
    def append(self, data, count):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.tokens[seq] + count > self.manager.max_tokens_per_sequence():
            return
        if self.manager.can_append(seq, count):
            slots = self.manager.append(seq, count).slots(4)
            assert len(set(slots.tolist())) == count and (slots // 4 != 0).all()
            self.tokens[seq] += count
        else:
            free_before = self.manager.num_free_blocks
            with pytest.raises(RuntimeError):
                self.manager.append(seq, count)
            assert self.manager.num_free_blocks == free_before

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        self.manager.free(seq)
        del self.tokens[seq]

    @invariant()
    def consistent(self):
        self.manager.check_invariants()
        assert {s: self.manager.num_tokens(s) for s in self.tokens} == self.tokens

    def teardown(self):
        for seq in list(self.tokens):
            self.manager.free(seq)
        assert self.manager.num_free_blocks == 23, "blocks leaked"


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(max_examples=40, stateful_step_count=50, deadline=None, derandomize=True)


def test_slots_of_all_live_tokens_are_distinct():
    rng = np.random.default_rng(0)
    manager = PagedKVCacheManager(num_blocks=64, block_size=8, layout="combined")
    steps = []
    for seq in range(6):
        manager.add(seq)
        steps.append(manager.append(seq, int(rng.integers(1, 30))))
    feeds = step_feeds(steps, block_size=8, layout="combined")
    k_blocks, v_blocks = feeds["block_table"][:, 0], feeds["block_table"][:, 1]
    real = np.concatenate([k_blocks[k_blocks > 0], v_blocks[v_blocks > 0]])
    assert len(set(real.tolist())) == len(real)


def test_prefix_hits_share_blocks_and_eviction_takes_the_tail_first():
    manager = PagedKVCacheManager(num_blocks=9, block_size=2)
    manager.add("a", [1, 2, 3, 4, 5])
    manager.append("a", 5, [1, 2, 3, 4, 5])
    manager.append("a", 1, [6])                        # the prompt's blocks are computed now: cached
    assert manager.add("b", [1, 2, 3, 4, 9]) == 4      # two full blocks hit; the last token is computed
    assert manager.block_ids("b")[0] == manager.block_ids("a")[0][:2]
    assert manager.stats()["prefix_hit_tokens"] == 4
    manager.free("a")
    manager.free("b")
    assert manager.stats()["blocks_cached"] == 2 and manager.num_free_blocks == 8
    manager.add("c", [])
    manager.append("c", 2 * 7)      # 7 blocks: 5 never used, a's uncached last block, then the cached chain's tail
    assert manager.stats()["evictions"] == 1 and manager.add("d", [1, 2, 3]) == 2   # a's head block survived
    manager.check_invariants()


def test_fork_copies_a_shared_partial_block_once():
    manager = PagedKVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    manager.add("p")
    manager.append("p", 6)                              # blocks [1, 2], block 2 half full
    manager.fork("p", "c")
    assert manager.stats()["blocks_used"] == 2
    assert manager.blocks_needed("c", 1) == 1           # the copy
    manager.append("c", 1)
    assert manager.take_copies() == [(2, 3)] and manager.block_ids("c")[0] == [1, 3]
    manager.append("p", 1)                              # p holds block 2 alone now: no copy
    assert manager.take_copies() == [] and manager.block_ids("p")[0] == [1, 2]
    manager.check_invariants()


class ServingMachine(RuleBasedStateMachine):
    """Random add (with shared prefixes), append, fork, free on both layouts; invariants after each step."""

    def __init__(self):
        super().__init__()
        self.manager = None
        self.live: list[int] = []
        self.next_id = 0

    @precondition(lambda self: self.manager is None)
    @rule(layout=st.sampled_from(["separate", "combined"]))
    def start(self, layout):
        self.manager = PagedKVCacheManager(num_blocks=21, block_size=2, layout=layout)

    @precondition(lambda self: self.manager is not None)
    @rule(prefix=st.integers(0, 2), extra=st.lists(st.integers(0, 3), max_size=5))
    def add(self, prefix, extra):
        prompt = [7, 7, 8, 8, 9, 9][: prefix * 2] + extra
        cached = self.manager.add(self.next_id, prompt)
        assert cached % 2 == 0 and cached < max(1, len(prompt)) + (0 if prompt else 1)
        self.live.append(self.next_id)
        self.next_id += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data(), tokens=st.lists(st.integers(0, 3), min_size=1, max_size=5))
    def append(self, data, tokens):
        seq = data.draw(st.sampled_from(self.live))
        if self.manager.num_tokens(seq) + len(tokens) > self.manager.max_tokens_per_sequence():
            return
        if self.manager.can_append(seq, len(tokens)):
            self.manager.append(seq, len(tokens), tokens)
            self.manager.take_copies()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data):
        self.manager.fork(data.draw(st.sampled_from(self.live)), self.next_id)
        self.live.append(self.next_id)
        self.next_id += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.manager.free(seq)
        self.live.remove(seq)

    @invariant()
    def consistent(self):
        if self.manager is not None:
            self.manager.check_invariants()

    def teardown(self):
        if self.manager is None:
            return
        for seq in list(self.live):
            self.manager.free(seq)
        assert self.manager.num_free_blocks == self.manager.num_units, "units leaked"
        assert self.manager.stats()["blocks_used"] == 0


TestServingMachine = ServingMachine.TestCase
TestServingMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None, derandomize=True)
