"""The kv policy's parts on crafted states: block keys, the prefix index, the cost, the guards."""

from __future__ import annotations

import random
import time

import pytest

from tests.serve.conftest import metric_value
from tokenworks.router.estimates import HALF_LIFE_S, SHRINK_SAMPLES, LinearEstimate, pooled
from tokenworks.router.flight import Flight
from tokenworks.router.kv_policy import KvAware
from tokenworks.router.metrics import RouterMetrics
from tokenworks.router.policies import RoutedRequest
from tokenworks.router.prefix_index import PrefixIndex, block_keys
from tokenworks.router.workers import KVEventSource, Worker, WorkerPool, parse_worker_spec

SIZE = 4
PROMPT = list(range(100, 118))  # 18 tokens: 4 full blocks of 4, and 2 over


def workers(count: int = 2, with_events: bool = True) -> list[Worker]:
    source = KVEventSource("tcp://127.0.0.1:1") if with_events else None
    return [Worker(f"http://127.0.0.1:{9000 + i}", f"w{i}", block_size=SIZE, kv_events=source) for i in range(count)]


def kv_policy(pool: list[Worker], **options) -> KvAware:
    index = PrefixIndex()
    for worker in pool:
        index.add_worker(worker.id)
    return KvAware(index, **options)


def routed(tokens: list[int] | None, **body) -> RoutedRequest:
    return RoutedRequest(body, {}, tokens=tokens)


def store(index: PrefixIndex, worker: str, tokens: list[int], blocks: int, first_hash: int = 0) -> None:
    """The worker's events for the first `blocks` blocks of `tokens`, its own hashes first_hash, first_hash + 1, ..."""
    assert index.stored(worker, list(range(first_hash, first_hash + blocks)), None, tokens[: blocks * SIZE], SIZE)


# ---- block keys and the index ------------------------------------------------------------------


def test_block_keys_chain_whole_blocks_only():
    keys = block_keys(PROMPT, SIZE)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert block_keys(PROMPT[:8] + [1] * 10, SIZE)[:2] == keys[:2]  # the same first two blocks
    assert block_keys(PROMPT[:8] + [1] * 10, SIZE)[2:] != keys[2:]
    assert block_keys([0, *PROMPT[1:]], SIZE)[1:] != keys[1:]  # a change early changes every later key
    assert block_keys(PROMPT, SIZE, extra="adapter") != keys  # an adapter's blocks are its own
    assert block_keys(PROMPT[:3], SIZE) == []


def test_the_index_matches_leading_blocks_per_worker():
    index = PrefixIndex()
    for worker in ("w0", "w1", "w2"):
        index.add_worker(worker)
    keys = block_keys(PROMPT, SIZE)
    store(index, "w0", PROMPT, 4)
    store(index, "w1", PROMPT, 2, first_hash=10)
    # w2 holds blocks 2 and 3 only through a parent it reported: not a prefix of this prompt
    assert index.matched_blocks(keys, ["w0", "w1", "w2"]) == {"w0": 4, "w1": 2}  # w2 holds none
    assert (index.size("w0"), index.size("w1"), index.size()) == (4, 2, 6)

    index.removed("w0", [2])  # its third block evicted: only two lead now
    assert index.matched_blocks(keys, ["w0", "w1"]) == {"w0": 2, "w1": 2}
    assert index.stored("w1", [12], 11, PROMPT[8:12], SIZE)  # w1 adds its third block under its parent
    assert index.matched_blocks(keys, ["w0", "w1"]) == {"w0": 2, "w1": 3}
    assert not index.stored("w1", [99], 98, PROMPT[12:16], SIZE)  # a parent never seen: events were lost
    index.clear("w1")
    assert index.matched_blocks(keys, ["w0", "w1"]) == {"w0": 2} and index.size("w1") == 0
    index.remove_worker("w0")
    assert index.size() == 0


def leading_blocks(keys: list[int], held: set[int]) -> int:
    return next((depth for depth, key in enumerate(keys) if key not in held), len(keys))


def test_the_index_agrees_with_a_plain_model_of_every_workers_blocks():
    """Random events, predictions and evictions on 6 workers; each worker's match is checked
    against sets of the keys each holds and is predicted to hold, prefix by prefix."""
    rng = random.Random(7)
    for trial in range(200):
        index, held, predicted, own_hash = PrefixIndex(), {}, {}, {}
        ids = [f"w{i}" for i in range(6)]
        for worker in ids:
            index.add_worker(worker)
            held[worker], predicted[worker] = set(), set()
        base, next_hash = [rng.randrange(4) for _ in range(40)], 0
        for _ in range(rng.randrange(1, 16)):
            worker, blocks = rng.choice(ids), rng.randrange(1, 11)
            tokens = base[: blocks * SIZE] if rng.random() < 0.7 else [rng.randrange(4) for _ in range(blocks * SIZE)]
            hashes = list(range(next_hash, next_hash + blocks))
            next_hash += blocks
            keys = block_keys(tokens, SIZE)
            assert index.stored(worker, hashes, None, tokens, SIZE)
            held[worker].update(keys)
            own_hash.update(zip(hashes, ((worker, key) for key in keys), strict=True))
            if rng.random() < 0.4:
                start = rng.randrange(len(keys) + 1)
                index.predict(worker, keys[start:], ttl_s=60)
                predicted[worker].update(keys[start:])
            if rng.random() < 0.3:
                evicted = rng.sample(hashes, rng.randrange(len(hashes) + 1))
                index.removed(worker, evicted)
                for engine_hash in evicted:
                    held[worker].discard(own_hash[engine_hash][1])
                    predicted[worker].discard(own_hash[engine_hash][1])
        if rng.random() < 0.3:
            cleared = rng.choice(ids)
            index.clear(cleared)
            held[cleared].clear()
            predicted[cleared].clear()
        query = block_keys(base[: rng.randrange(41)] + [rng.randrange(4) for _ in range(rng.randrange(8))], SIZE)

        expected = {worker: leading_blocks(query, held[worker] | predicted[worker]) for worker in ids}
        confirmed = {worker: leading_blocks(query, held[worker]) for worker in ids}
        found, sure = index.matched_and_confirmed(query)
        assert found == {worker: depth for worker, depth in expected.items() if depth}, trial
        assert sure == {worker: depth for worker, depth in confirmed.items() if depth and worker in found}, trial


def test_an_evicted_block_is_no_longer_predicted_either():
    index = PrefixIndex()
    index.add_worker("w0")
    keys = block_keys(PROMPT, SIZE)
    store(index, "w0", PROMPT, 4)
    index.predict("w0", keys, ttl_s=60)  # sent there again: expected for a minute
    index.removed("w0", [2])  # then its events say the third block was evicted
    assert index.matched_blocks(keys, ["w0"]) == {"w0": 2}


def test_predictions_count_until_they_expire():
    now = [100.0]
    index = PrefixIndex(clock=lambda: now[0])  # a host stalled past the TTL cannot fail the first checks
    index.add_worker("w0")
    keys = block_keys(PROMPT, SIZE)
    index.predict("w0", keys[:3], ttl_s=0.2)
    assert index.matched_blocks(keys, ["w0"]) == {"w0": 3}
    assert index.matched_and_confirmed(keys, ["w0"]) == ({"w0": 3}, {})  # on its way in, not confirmed
    store(index, "w0", PROMPT, 2)
    now[0] += 0.199
    assert index.matched_and_confirmed(keys, ["w0"]) == ({"w0": 3}, {"w0": 2})
    now[0] += 0.01  # past its TTL
    assert index.matched_blocks(keys, ["w0"]) == {"w0": 2}


# ---- what is learnt --------------------------------------------------------------------------------


def test_a_linear_estimate_fits_its_samples_and_leans_on_its_peers_until_it_has_recent_ones():
    estimate = LinearEstimate(0.01, 1e-4)
    assert estimate.blended(None, now=0.0) == (0.01, 1e-4)  # nothing seen: the prior
    estimate.add(50, 9.0, now=0.0)  # the first answer (an engine warming up) is not fitted
    assert (estimate.samples, estimate.weight(0.0)) == (1, 0.0)
    for x in (100, 400, 800, 1600, 3200):
        estimate.add(x, 0.005 + 2e-5 * x, now=10.0)
    assert (estimate.a, estimate.b) == pytest.approx((0.005, 2e-5))
    weight = estimate.weight(10.0)
    assert weight == pytest.approx(sum(0.97**k for k in range(5)))
    assert estimate.weight(10.0 + HALF_LIFE_S) == pytest.approx(weight / 2)  # unfed, it fades
    trust = weight / (weight + SHRINK_SAMPLES)
    assert estimate.blended((1.0, 1.0), 10.0) == pytest.approx((trust * 0.005 + 1 - trust, trust * 2e-5 + 1 - trust))
    same = LinearEstimate(0.0, 1.0)
    for _ in range(6):
        same.add(500, 0.05, now=0.0)  # every sample the same x: a line through the origin
    assert (same.a, same.b) == pytest.approx((0.0, 1e-4))
    assert pooled([estimate, LinearEstimate(1.0, 1.0)], now=10.0) == pytest.approx((0.005, 2e-5))  # the fed one only
    assert pooled([LinearEstimate(1.0, 1.0)], now=0.0) is None


def learn(worker: Worker, estimate: str, samples: list[tuple[float, float]]) -> None:
    for x, y in samples:
        getattr(worker, estimate).add(x, y, now=time.monotonic())


# ---- the policy ----------------------------------------------------------------------------------------


def test_kv_sends_a_prompt_where_its_prefix_is():
    pool = workers()
    policy = kv_policy(pool)
    store(policy.index, "w1", PROMPT, 3)
    request = routed(PROMPT)
    assert policy.choose(request, pool) is pool[1]
    assert (request.reason, request.predicted_cached_tokens, request.uncached_tokens) == ("prefix-hit", 12, 6)


def test_a_whole_prompt_cached_still_leaves_one_token_to_compute():
    pool = workers()
    policy = kv_policy(pool)
    store(policy.index, "w0", PROMPT[:16], 4)
    request = routed(PROMPT[:16])
    assert policy.choose(request, pool) is pool[0] and request.predicted_cached_tokens == 15


def test_a_queue_costing_more_than_the_prefill_saved_sends_it_elsewhere():
    pool = workers()
    for worker in pool:  # both learnt: 1 ms per prefill token
        learn(worker, "ttft", [(x, 0.001 * x) for x in (10, 10, 20, 40, 80)])
    policy = kv_policy(pool)
    store(policy.index, "w0", PROMPT, 4)
    # The 16 tokens its hit saves count twice (this request's wait, and the compute the fleet's
    # later requests wait behind): a queue of more than 32 costs more.
    pool[0].pending_prefill_tokens = 33
    request = routed(PROMPT, max_tokens=1)
    assert policy.choose(request, pool) is pool[1]
    assert (request.reason, request.predicted_cached_tokens) == ("load", 0)
    policy.index.clear("w1")  # forget that it just went there
    pool[0].pending_prefill_tokens = 31
    assert policy.choose(routed(PROMPT, max_tokens=1), pool) is pool[0]


def test_the_decode_guard_weighs_a_workers_decoding_load():
    pool = workers()
    for worker in pool:  # each request decoding there adds 1 ms to every output token
        learn(worker, "tpot", [(decoding, 0.01 + 0.001 * decoding) for decoding in (1, 1, 2, 4, 8)])
    policy = kv_policy(pool)
    store(policy.index, "w0", PROMPT, 4)
    pool[0].decoding = 5  # 128 tokens x 5 ms more than on w1: far more than 16 prefill tokens
    request = routed(PROMPT, max_tokens=128)
    assert policy.choose(request, pool) is pool[1] and request.reason == "load"


def test_requests_sent_together_are_not_sent_as_a_convoy():
    """Two requests end together on w0 of a closed loop (2 left there, 4 on w1) and two new
    ones, with no prefix anywhere, are sent at once: the first fills the gap, the second does
    not join its prefill (they would be prefilled in one step and end together again)."""
    pool = workers()
    for worker in pool:  # 1 ms a prefill token; 10 ms a token, and 1 ms more for each other request
        learn(worker, "ttft", [(x, 0.001 * x) for x in (10, 10, 20, 40, 80)])
        learn(worker, "tpot", [(decoding, 0.01 + 0.001 * decoding) for decoding in (1, 1, 2, 4, 8)])
    pool[0].in_flight = pool[0].decoding = 2
    pool[1].in_flight = pool[1].decoding = 4
    policy = kv_policy(pool, max_load_ratio=100.0)  # the cost alone (the hot-spot guard would also split them)
    first, second = routed(list(range(1000, 1018)), max_tokens=8), routed(list(range(2000, 2018)), max_tokens=8)
    assert policy.choose(first, pool) is pool[0] and first.reason == "no-prefix-hit"
    Flight(pool[0], first, RouterMetrics(WorkerPool(pool)))  # in flight there, waiting for its first token
    assert (pool[0].in_flight, pool[0].pending_prefill_tokens) == (3, 18)
    # w0: 18 ahead + 18 x (2 + 1 waiting) prefill tokens, 8 x 1.5 ms x 2 decoding; w1: 18 x 2
    # and 8 x 1.5 ms x 4: 72 ms against 36 ms of prefill, 24 against 48 ms of decode (without the
    # waiting one's delay, 54 + 24 against 36 + 48: the convoy)
    assert policy.choose(second, pool) is pool[1]


def test_the_hot_spot_guard_keeps_each_busy_workers_recent_load_near_the_mean():
    pool = workers(2)
    policy = kv_policy(pool)  # max_load_ratio 1.2
    store(policy.index, "w0", PROMPT, 4)  # one hot prefix, held by w0 only

    def send(question: int) -> RoutedRequest:
        request = routed([*PROMPT[:16], question, question])
        policy.choose(request, pool).in_flight += 1  # each stays in flight, as under load
        return request

    first, second = send(1), send(2)
    assert first.reason == "prefix-hit" and pool[0].in_flight == 1
    # w0, busy, at 2 against a mean of 1 would be above 1.2 x the mean: the hot prefix goes to w1 too
    assert second.reason == "hot-spot-guard" and pool[1].in_flight == 1
    for question in range(3, 23):
        send(question)
    assert abs(pool[0].in_flight - pool[1].in_flight) <= 2
    assert policy.recent_load("w0", time.monotonic()) == pytest.approx(pool[0].in_flight, abs=0.5)  # aged a little

    idle = kv_policy(pool)  # an idle worker is no hot spot: one user's paced turns stay together
    pool[0].in_flight = pool[1].in_flight = 0
    store(idle.index, "w0", PROMPT, 4)
    assert {idle.choose(routed([*PROMPT[:16], k, k]), pool).id for k in range(5)} == {"w0"}


def test_siblings_sent_before_any_event_land_together():
    pool = workers(4)
    policy = kv_policy(pool)
    chosen = []
    prompt = list(range(100, 166))  # 16 whole blocks shared, 2 tokens over (a long prefix, a short question)
    for _ in range(8):  # an agent's fan-out of 8, all in flight at once, the first still prefilling
        request = routed(prompt)
        chosen.append(policy.choose(request, pool))
        chosen[-1].in_flight += 1
        chosen[-1].pending_prefill_tokens += request.uncached_tokens  # as its flight counts it
    assert len({worker.id for worker in chosen}) == 1
    other = policy.choose(routed([7] * 18), pool)  # an unrelated prompt goes by load
    assert other is not chosen[0] and other.in_flight == 0


def test_on_an_idle_fleet_each_burst_goes_where_the_last_one_did_not():
    pool = workers(2)
    policy = kv_policy(pool)
    chosen = [
        policy.choose(routed([burst * 100 + k for k in range(18)] + [sibling]), pool).id
        for burst in range(4)
        for sibling in range(3)
    ]  # fmt: skip
    assert chosen == ["w0"] * 3 + ["w1"] * 3 + ["w0"] * 3 + ["w1"] * 3  # ties in turn, after the last chosen


def test_a_worker_already_tried_is_no_prefix_hit_for_the_retry():
    pool = workers(3)
    policy = kv_policy(pool)
    store(policy.index, "w0", PROMPT, 4)
    first = routed(PROMPT)
    assert policy.choose(first, pool) is pool[0] and first.reason == "prefix-hit"
    retry = routed(PROMPT)  # w0 failed before answering: the proxy offers the others
    assert policy.choose(retry, pool[1:]) in pool[1:]
    assert (retry.reason, retry.predicted_cached_tokens) == ("no-prefix-hit", 0)


def test_without_events_the_router_remembers_what_it_sent():
    pool = workers(with_events=False)
    policy = kv_policy(pool)
    first = policy.choose(routed(PROMPT), pool)
    pool[0].in_flight = pool[1].in_flight = 0
    again = routed([*PROMPT[:16], 5, 5])
    assert policy.choose(again, pool) is first and again.predicted_cached_tokens == 16


def test_a_prompt_the_router_cannot_read_goes_by_load():
    pool = workers()
    pool[0].in_flight = 2
    policy = kv_policy(pool)
    request = routed(None)
    assert policy.choose(request, pool) is pool[1]
    assert (request.reason, request.predicted_cached_tokens) == ("no-prompt-tokens", None)


def test_worker_specs_name_their_kv_events():
    assert parse_worker_spec("http://h:1/v1") == ("http://h:1", None, None)
    url, events, size = parse_worker_spec("http://h:1,kv_events=tcp://h:5557,replay=tcp://h:5558,block_size=16")
    assert (url, events, size) == ("http://h:1", KVEventSource("tcp://h:5557", "tcp://h:5558"), 16)
    for bad, message in (
        ("http://h:1,colour=red", "unknown worker option"),
        ("http://h:1,block_size=0", "block_size must be a positive integer"),
        ("http://h:1,replay=tcp://h:2", "replay= needs kv_events="),
    ):
        with pytest.raises(ValueError, match=message):
            parse_worker_spec(bad)


def test_a_flight_holds_its_workers_load_and_learns_from_its_end():
    worker = workers(1)[0]
    metrics = RouterMetrics(WorkerPool([worker]))
    learnt: list[int] = []
    request = RoutedRequest({}, {}, tokens=[1] * 40, predicted_cached_tokens=16, uncached_tokens=24)
    flight = Flight(worker, request, metrics, learnt.append)
    assert (worker.in_flight, worker.pending_prefill_tokens, worker.decoding) == (1, 24, 0)
    flight.streamed('data: {"choices": [{"text": "a"}]}\n\n')
    assert (worker.in_flight, worker.pending_prefill_tokens, worker.decoding) == (1, 0, 1)
    usage = '{"prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 16}}'
    flight.streamed(f'data: {{"choices": [{{"text": "b"}}]}}\n\ndata: {{"choices": [], "usage": {usage}}}\n\n')
    flight.streamed("data: [DONE]\n\n")
    flight.ended()
    flight.abandoned()  # the stream's close after its end changes nothing
    assert (worker.in_flight, worker.pending_prefill_tokens, worker.decoding) == (0, 0, 0)
    assert (worker.ttft.samples, worker.tpot.samples, learnt) == (1, 1, [3])
    scraped = metrics.render().decode()
    for name, value in (("prompt", 40), ("completion", 3), ("reported_cached", 16), ("predicted_cached", 16)):
        assert metric_value(scraped, f"tokenworks_router_{name}_tokens_total", {"worker": worker.url}) == value


def test_the_time_per_output_token_is_learnt_between_prefills():
    """The prefills a worker did while a request decoded (one waiting at its first token, one
    sent there after it) held its tokens back by their prefill time: its sample leaves them out."""
    worker = workers(1)[0]
    learn(worker, "ttft", [(x, 0.001 * x) for x in (10, 10, 20, 40, 80)])  # 1 ms per prefill token
    learn(worker, "tpot", [(1, 0.5)])  # a worker's first sample is never fitted
    now = [0.0]
    metrics = RouterMetrics(WorkerPool([worker]))

    def fly(uncached: int) -> Flight:
        return Flight(worker, RoutedRequest({}, {}, uncached_tokens=uncached), metrics, clock=lambda: now[0])

    decoding = fly(100)
    now[0] = 0.05
    fly(30)  # still waiting for its prefill when the first one's first token comes
    now[0] = 0.1
    decoding.streamed('data: {"choices": [{"text": "a"}]}\n\n')
    now[0] = 0.2
    fly(50)  # sent while the first one decodes
    now[0] = 1.1
    usage = '{"prompt_tokens": 100, "completion_tokens": 11, "prompt_tokens_details": {"cached_tokens": 0}}'
    decoding.streamed(f'data: {{"choices": [], "usage": {usage}}}\n\ndata: [DONE]\n\n')
    decoding.ended()
    # 1.0 s from its first token to its end, less 80 prefill tokens at 1 ms: 0.92 s for 10 tokens,
    # with itself alone decoding (one fitted sample: a line through the origin)
    assert (worker.tpot.a, worker.tpot.b) == (0.0, pytest.approx(0.092))
    assert worker.ttft.b == pytest.approx(0.001)  # its own sample (100 tokens in 0.1 s) on the same line
