"""The block pool and KV-cache manager: exact block ids, LRU order, and random-operation invariants."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tokenworks.engine.block_pool import BlockPool
from tokenworks.engine.kv_cache_manager import KVCacheManager
from tokenworks.engine.request import Request
from tokenworks.engine.sampling_params import SamplingParams


def request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=4))


def test_allocation_takes_blocks_in_free_list_order_and_frees_last_first() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = request("a", list(range(10)))  # 10 tokens: 3 blocks
    assert manager.allocate_slots(first, 10)
    assert first.block_ids == [0, 1, 2]
    second = request("b", list(range(100, 105)))
    assert manager.allocate_slots(second, 5)
    assert second.block_ids == [3, 4]
    manager.free(first)
    # free list: 5, 6, 7 (never used), then a's blocks last first: 2, 1, 0; all six are
    # taken, and handed out in address order
    third = request("c", list(range(200, 224)))
    assert manager.allocate_slots(third, 24)
    assert third.block_ids == [0, 1, 2, 5, 6, 7]
    assert manager.pool.stats.evictions == 2  # blocks 0 and 1 were full and cached; 2 held 2 tokens


def test_prefix_hits_share_blocks_and_revive_freed_ones() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = request("a", list(range(10)))
    assert manager.allocate_slots(first, 10)
    manager.free(first)  # blocks 0 and 1 stay cached while free
    again = request("b", [*range(8), 50, 51, 52])
    cached, tokens = manager.cached_prefix(again)
    assert ([block.block_id for block in cached], tokens) == ([0, 1], 8)
    assert manager.allocate_slots(again, 3, cached)
    assert again.block_ids == [0, 1, 3]
    assert [manager.pool.blocks[i].ref_count for i in (0, 1, 3)] == [1, 1, 1]
    third = request("c", [*range(8), 60])
    cached, tokens = manager.cached_prefix(third)
    assert manager.allocate_slots(third, 1, cached)
    assert third.block_ids == [0, 1, 4] and manager.pool.blocks[0].ref_count == 2
    manager.pool.check_invariants()


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=4)
    first = request("a", list(range(8)))
    assert manager.allocate_slots(first, 8)
    manager.free(first)
    _, tokens = manager.cached_prefix(request("b", list(range(8))))
    assert tokens == 4  # the second block is left to compute, so the step can sample


def test_allocation_is_all_or_nothing() -> None:
    manager = KVCacheManager(num_blocks=3, block_size=4)
    assert manager.allocate_slots(request("a", list(range(8))), 8)
    big = request("b", list(range(100, 112)))
    assert not manager.allocate_slots(big, 12)
    assert big.block_ids == [] and manager.pool.num_free_blocks == 1
    manager.pool.check_invariants()


def test_salted_requests_do_not_share_a_prefix() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4)
    plain = request("a", list(range(9)))
    assert manager.allocate_slots(plain, 9)
    salted = Request("b", list(range(9)), SamplingParams(), cache_salt="adapter-1")
    assert manager.cached_prefix(salted) == ([], 0)


class KVCacheMachine(RuleBasedStateMachine):
    """Random allocate / append / share / free / abort sequences never leak or double-free a block."""

    def __init__(self) -> None:
        super().__init__()
        self.manager = KVCacheManager(num_blocks=12, block_size=4)
        self.live: dict[str, Request] = {}
        self.count = 0

    @rule(length=st.integers(1, 20), shared=st.booleans())
    def add(self, length: int, shared: bool) -> None:
        self.count += 1
        tokens = list(range(length)) if shared else [1000 + self.count * 50 + i for i in range(length)]
        new = request(f"r{self.count}", tokens)
        cached, num_cached = self.manager.cached_prefix(new)
        if self.manager.allocate_slots(new, length - num_cached, cached):
            new.num_computed_tokens = length
            self.live[new.request_id] = new

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def append_token(self, data) -> None:
        target = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        target.append_output_token(7)
        if self.manager.allocate_slots(target, 1):
            target.num_computed_tokens += 1
        else:
            self.manager.free(target)  # what preemption does
            del self.live[target.request_id]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish_or_abort(self, data) -> None:
        self.manager.free(self.live.pop(data.draw(st.sampled_from(sorted(self.live)))))

    @invariant()
    def consistent(self) -> None:
        pool = self.manager.pool
        pool.check_invariants()
        holders: dict[int, int] = {}
        for live in self.live.values():
            assert len(live.block_ids) == -(-live.num_computed_tokens // 4)
            for block_id in live.block_ids:
                holders[block_id] = holders.get(block_id, 0) + 1
        for block in pool.blocks:
            assert block.ref_count == holders.get(block.block_id, 0)

    def teardown(self) -> None:
        for live in list(self.live.values()):
            self.manager.free(live)
        assert self.manager.pool.num_free_blocks == 12
        self.manager.pool.check_invariants()


KVCacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_kv_cache_invariants = KVCacheMachine.TestCase


def test_double_free_is_refused() -> None:
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.free([block])
    with pytest.raises(RuntimeError, match="freed more often than taken"):
        pool.free([block])
