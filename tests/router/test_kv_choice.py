"""The kv policy's decision against the straightforward computation, on randomized states.

`KvAware.choose` prices the workers in a comprehension and finds the cheapest in C, with
the hot-spot guard and the ties settled afterwards (kv_policy.py). Here every decision is
checked against the plain reading of the module's docstring: one pass over the workers in
turn, each priced by the cost formula and kept when strictly cheaper, or as cheap with fewer
in flight, with and without the guard. The states are drawn to hit the rare paths: equal
estimates (exact ties), idle and busy workers, recent loads over the guard's limit, siblings
(predicted, not confirmed blocks), workers without events, two block sizes, prompts of one
block, a cost that is not a number or infinite.
"""

from __future__ import annotations

import math
import random

import pytest

from tokenworks.router.kv_policy import DEFAULT_BLOCK_SIZE, KvAware
from tokenworks.router.policies import RoutedRequest
from tokenworks.router.prefix_index import PrefixIndex, block_keys
from tokenworks.router.workers import KVEventSource, Worker

VOCAB = 3  # few token values: prompts share prefixes often


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def expected_choice(policy: KvAware, request: RoutedRequest, candidates: list[Worker]) -> tuple[str, str, int] | None:
    """(worker id, reason, predicted cached tokens) by the plain computation, changing nothing;
    None when no worker has a cost to compare (the policy then fails its assertion)."""
    index, tokens, prompt = policy.index, request.tokens, len(request.tokens)
    ids = [worker.id for worker in candidates]
    roster = policy._roster_of(candidates)  # the blended estimates, as the policy has them
    blocks_held, sibling = {}, {}
    for worker in candidates:
        size = worker.block_size or DEFAULT_BLOCK_SIZE
        keys = block_keys(tokens, size, policy._extra_key(request))
        blocks = index.matched_blocks(keys, [worker.id]).get(worker.id, 0)
        blocks_held[worker.id] = min(blocks * size, prompt - 1)
        sibling[worker.id] = (
            worker.kv_events is not None and blocks > 0 and not index.confirms(worker.id, keys[blocks - 1])
        )
    outputs = policy.expected_output_tokens(request)
    limit = policy._load_limit(ids)

    def allowed(worker: Worker) -> bool:
        return policy._scaled.get(worker.id, 0.0) <= limit or worker.in_flight == 0 or sibling[worker.id]

    start = policy._turn % len(roster)
    best = best_of_all = None
    best_cost = best_cost_of_all = math.inf
    best_in_flight = best_in_flight_of_all = 0
    for worker, worker_id, turn, per_token, step, per_decoding in roster[start:] + roster[:start]:
        in_flight = worker.in_flight
        lacking = prompt - blocks_held[worker_id]
        cost = (
            turn + per_token * (worker.pending_prefill_tokens + (2 + in_flight - worker.decoding) * lacking)
            + outputs * (step + per_decoding * worker.decoding)
        )  # fmt: skip
        if cost < best_cost_of_all or (cost == best_cost_of_all and in_flight < best_in_flight_of_all):
            best_of_all, best_cost_of_all, best_in_flight_of_all = worker, cost, in_flight
        if (cost < best_cost or (cost == best_cost and in_flight < best_in_flight)) and allowed(worker):
            best, best_cost, best_in_flight = worker, cost, in_flight
    chosen = best if best is not None else best_of_all
    if chosen is None:
        return None
    chosen_hit, best_anywhere = blocks_held[chosen.id], max(blocks_held.values())
    if best_anywhere == 0:
        reason = "no-prefix-hit"
    elif chosen_hit == best_anywhere:
        reason = "prefix-hit"
    elif best is not None and not any(allowed(w) for w in candidates if blocks_held[w.id] == best_anywhere):
        reason = "hot-spot-guard"
    else:
        reason = "load"
    return chosen.id, reason, chosen_hit


def random_fleet(rng: random.Random, clock: Clock) -> tuple[KvAware, list[Worker], list[list[int]]]:
    count = rng.randrange(1, 9)
    sizes = [4] * count if rng.random() < 0.7 else [rng.choice((2, 4)) for _ in range(count)]
    alike = rng.random() < 0.5  # the same estimates everywhere: costs tie exactly
    index = PrefixIndex(clock=clock)
    pool = []
    for i in range(count):
        events = KVEventSource(f"tcp://127.0.0.1:{i}") if rng.random() < 0.8 else None
        worker = Worker(f"http://127.0.0.1:{9000 + i}", f"w{i}", block_size=sizes[i], kv_events=events)
        if not alike:
            for k in range(rng.randrange(6)):
                worker.ttft.add(10 + 50 * k, 0.01 + 1e-4 * (10 + 50 * k) * rng.uniform(0.5, 2), clock.now)
                worker.tpot.add(1 + k, 0.02 + 1e-3 * k * rng.uniform(0.5, 2), clock.now)
        index.add_worker(worker.id)
        pool.append(worker)
    prefixes = [[rng.randrange(VOCAB) for _ in range(rng.randrange(4, 40))] for _ in range(3)]
    for worker in pool:  # confirmed blocks: some of a shared prefix, by the worker's own events
        for prefix in prefixes:
            blocks = rng.randrange(len(prefix) // worker.block_size + 1)
            if blocks and rng.random() < 0.5:
                size = worker.block_size
                hashes = [(worker.id, id(prefix), k) for k in range(blocks)]
                assert index.stored(worker.id, hashes, None, prefix[: blocks * size], size)
    policy = KvAware(index, max_load_ratio=rng.choice((1.0, 1.2, 2.0)), clock=clock)
    return policy, pool, prefixes


def test_the_decision_matches_the_plain_computation_on_random_states():
    rng = random.Random(21)
    decisions = 0
    seen = set()
    for trial in range(300):
        clock = Clock()
        policy, pool, prefixes = random_fleet(rng, clock)
        for step in range(12):
            for worker in pool:
                worker.in_flight = rng.choice((0, 0, 1, 2, 5))
                worker.decoding = rng.randrange(worker.in_flight + 1)
                worker.pending_prefill_tokens = rng.choice((0, 0, 8, 16, 64))
            if rng.random() < 0.05:  # a cost that is not a number, or infinite, is never the cheapest
                rng.choice(pool).pending_prefill_tokens = rng.choice((math.nan, math.inf))
            candidates = pool if rng.random() < 0.8 else rng.sample(pool, rng.randrange(1, len(pool) + 1))
            prefix = rng.choice(prefixes)
            tokens = prefix[: rng.randrange(len(prefix) + 1)] + [rng.randrange(VOCAB) for _ in range(rng.randrange(6))]
            if not tokens:
                tokens = [rng.randrange(VOCAB)]
            body = {"max_tokens": rng.choice((0, 1, 16, 128, None))}
            request = RoutedRequest(body, {}, tokens=tokens)
            expected = expected_choice(policy, request, candidates)
            if expected is None:
                with pytest.raises(AssertionError):
                    policy.choose(request, candidates)
                continue
            chosen = policy.choose(request, candidates)
            assert (chosen.id, request.reason, request.predicted_cached_tokens) == expected, (trial, step)
            assert request.uncached_tokens == len(tokens) - expected[2]
            decisions += 1
            seen.add(request.reason)
            chosen.in_flight += 1
            clock.now += rng.choice((0.0, 0.001, 0.3, 2.0))  # predictions expire, loads fade
    assert decisions > 3500 and seen == {"no-prefix-hit", "prefix-hit", "hot-spot-guard", "load"}
