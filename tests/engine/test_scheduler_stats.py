"""The scheduler's prefix-cache statistics: each request's lookup counted once, in exact tokens."""

from __future__ import annotations

from tokenworks.engine.kv_cache_manager import KVCacheManager
from tokenworks.engine.request import Request, RequestStatus
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.engine.scheduler import Scheduler


def step(scheduler: Scheduler) -> list[str]:
    """Schedule once and apply what a step of the core would: tokens computed, one sampled each."""
    output = scheduler.schedule()
    for chunk in output.chunks:
        chunk.request.num_computed_tokens += chunk.num_tokens
        if chunk.samples:
            chunk.request.append_output_token(7)
    return [chunk.request.request_id for chunk in output.chunks]


def counts(scheduler: Scheduler) -> tuple[int, int]:
    stats = scheduler.stats()
    return stats.prefix_cache_queries, stats.prefix_cache_hits


def test_a_request_retried_at_the_head_of_the_queue_is_counted_once() -> None:
    kv_cache = KVCacheManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(kv_cache, max_num_batched_tokens=64, max_num_seqs=8)
    params = SamplingParams(max_tokens=8)
    warm = Request("warm", list(range(8)), params)  # two full blocks, cached once it has run
    scheduler.add_request(warm)
    assert step(scheduler) == ["warm"]
    scheduler.finish(warm, RequestStatus.FINISHED_STOPPED)
    assert counts(scheduler) == (8, 0)

    sharing = Request("sharing", [*range(8), 50, 51, 52, 53], params)  # hits both cached blocks
    big = Request("big", list(range(100, 116)), params)  # needs all 4 blocks: waits behind "sharing"
    scheduler.add_request(sharing)
    scheduler.add_request(big)
    assert step(scheduler) == ["sharing"]
    assert counts(scheduler) == (8 + 12, 8)
    for _ in range(3):  # "big" is looked up again at every step while it waits; it is not counted again
        assert step(scheduler) == ["sharing"]
        assert [request.request_id for request in scheduler.waiting] == ["big"]
    assert counts(scheduler) == (20, 8)

    scheduler.finish(sharing, RequestStatus.FINISHED_STOPPED)
    assert step(scheduler) == ["big"]
    assert counts(scheduler) == (20 + 16, 8)
    assert big.num_cached_tokens == 0 and sharing.num_cached_tokens == 8
