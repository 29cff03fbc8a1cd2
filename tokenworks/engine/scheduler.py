"""The scheduler: which requests run in the next step, and how many tokens of each.

One token budget per step (`max_num_batched_tokens`) and at most `max_num_seqs` running
requests. Running requests are served first (decodes and unfinished prefill chunks alike),
then waiting ones, first come first served (or by priority, lower first). A long prompt is
prefilled in chunks that share steps with decodes. When blocks run out, the newest
running request (the lowest-priority one, under priority scheduling) is preempted: its
blocks are freed and it is recomputed later, from the prefix cache where its blocks survive.
No request is ever dropped, and since a preempted request gives back everything it holds,
the oldest request can always make progress: no deadlock.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenworks.engine.kv_cache_manager import KVCacheManager
from tokenworks.engine.messages import SchedulerStats
from tokenworks.engine.request import Request, RequestStatus


@dataclass(slots=True)
class ScheduledChunk:
    request: Request
    start: int  # num_computed_tokens before this step
    num_tokens: int  # tokens computed this step

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the request's tokens, and so samples the next one."""
        return self.start + self.num_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)


class Scheduler:
    def __init__(
        self,
        kv_cache: KVCacheManager,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        policy: str = "fcfs",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy must be 'fcfs' or 'priority', got {policy!r}")
        self.kv_cache = kv_cache
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        # What stamps first_scheduled and finished: the machine's clock live, a simulated one in
        # `tokenworks plan` (plan/clock.py), which runs this same scheduler at its own pace.
        self.clock = clock
        self.waiting: list[Request] = []  # in scheduling order
        self.running: list[Request] = []  # in admission order: the last is the newest
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    def _order(self, request: Request) -> tuple:
        return (request.priority, request.times.arrival) if self.policy == "priority" else (request.times.arrival,)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        bisect.insort(self.waiting, request, key=self._order)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:  # nothing to compute (cannot happen for a running request); skip it
                index += 1
                continue
            while not self.kv_cache.allocate_slots(request, num_new):
                victim = self._pick_victim()
                if self.running.index(victim) < index:  # already scheduled, earlier in the list
                    index -= 1
                budget += self._preempt(victim, output)
                if victim is request:
                    break
            else:
                output.chunks.append(ScheduledChunk(request, request.num_computed_tokens, num_new))
                budget -= num_new
                index += 1
                continue
            # The request preempted itself: nothing after it in `running` is older, so stop.
            break
        if not output.preempted:
            self._admit_waiting(output, budget)
        return output

    def _admit_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            cached, num_cached = self.kv_cache.cached_prefix(request)
            num_new = min(request.num_tokens - num_cached, budget)
            if not self.kv_cache.allocate_slots(request, num_new, cached):
                break
            self.waiting.pop(0)
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_cached
            if request.times.first_scheduled is None:
                request.times.first_scheduled = self.clock()
                request.num_cached_tokens = num_cached
                if self.kv_cache.enable_prefix_caching:
                    self.kv_cache.record_lookup(request.num_tokens, num_cached)
            output.chunks.append(ScheduledChunk(request, num_cached, num_new))
            budget -= num_new

    def _pick_victim(self) -> Request:
        if self.policy == "priority":
            return max(self.running, key=self._order)
        return self.running[-1]

    def _preempt(self, request: Request, output: SchedulerOutput) -> int:
        """Free everything the request holds and send it back to wait; it recomputes later.

        Returns the tokens it had been given in this step, which go back to the budget.
        """
        self.running.remove(request)
        self.kv_cache.free(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        # Drop it from this step if it was already scheduled in it.
        returned = sum(chunk.num_tokens for chunk in output.chunks if chunk.request is request)
        output.chunks = [chunk for chunk in output.chunks if chunk.request is not request]
        output.preempted.append(request.request_id)
        bisect.insort(self.waiting, request, key=self._order)
        return returned

    def finish(self, request: Request, status: RequestStatus) -> None:
        """End a request (stopped, length, or aborted) and free its blocks at once."""
        if request.finished:
            return
        request.status = status
        request.times.finished = self.clock()
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv_cache.free(request)
        self.requests.pop(request.request_id, None)

    def stats(self) -> SchedulerStats:
        pool_stats = self.kv_cache.pool.stats
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=self.kv_cache.usage,
            prefix_cache_queries=pool_stats.queries,
            prefix_cache_hits=pool_stats.hits,
            num_preemptions=self.num_preemptions,
        )
