"""KV events from the engine's publisher (real ZMQ sockets) into the router's index: batches in
order, gaps replayed, gaps that cannot be replayed resynced, restarts as new epochs, both wire forms."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import msgpack
import pytest
import zmq.asyncio

from tokenworks.engine.kv_events import KVEventPublisher
from tokenworks.engine.options import KVEventsConfig
from tokenworks.router.kv_events import EventFeedStats, Subscriber
from tokenworks.router.prefix_index import PrefixIndex, block_keys
from tokenworks.router.workers import KVEventSource, Worker

SIZE = 4
TOKENS = list(range(1, 25))  # six blocks of four
CLEARED = [{"type": "AllBlocksCleared"}]


def stored(first_block: int, count: int, parent: int | None) -> list[dict]:
    tokens = TOKENS[first_block * SIZE : (first_block + count) * SIZE]
    hashes = [b"h%d" % i for i in range(first_block, first_block + count)]
    return [{
        "type": "BlockStored", "block_hashes": hashes, "parent_block_hash": None if parent is None else b"h%d" % parent,
        "token_ids": tokens, "block_size": SIZE, "lora_id": None, "medium": "CPU", "lora_name": None,
    }]  # fmt: skip


def payload(events: list) -> bytes:
    return msgpack.packb([time.time(), events, 0])


def publisher(buffer_steps: int) -> KVEventPublisher:
    return KVEventPublisher(
        KVEventsConfig(
            True, endpoint="tcp://127.0.0.1:*", replay_endpoint="tcp://127.0.0.1:*", buffer_steps=buffer_steps
        )
    )


def subscriber(source: KVEventSource) -> tuple[Subscriber, PrefixIndex, Worker]:
    index, worker = PrefixIndex(), Worker("http://127.0.0.1:1", "w0")
    index.add_worker("w0")
    return Subscriber(worker, source, index, EventFeedStats(), zmq.asyncio.Context.instance()), index, worker


def matched(index: PrefixIndex) -> int:
    return index.matched_blocks(block_keys(TOKENS, SIZE), ["w0"]).get("w0", 0)


def test_an_engines_events_reach_the_index_in_order():
    source = publisher(buffer_steps=100)

    async def scenario():
        feed, index, worker = subscriber(KVEventSource(source.endpoint, source.replay_endpoint))
        task = asyncio.ensure_future(feed.run())
        await asyncio.sleep(0.3)  # ZMQ's slow joiner: the subscription has to arrive first
        source.publish(stored(0, 2, None))
        source.publish(stored(2, 2, 1))
        source.publish([{"type": "BlockRemoved", "block_hashes": [b"h3"], "medium": "CPU"}])
        for _ in range(100):
            if feed.expected == 4:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        assert (feed.expected, worker.block_size) == (4, SIZE)
        assert matched(index) == 3 and index.size("w0") == 3
        # sequence 0 (the first, AllBlocksCleared) was missed by the subscription: replayed, not resynced
        assert (feed.stats.batches, feed.stats.resyncs, feed.stats.epochs) == (4, 0, 0)

    try:
        asyncio.run(scenario())
    finally:
        source.close()


def test_a_gap_is_replayed_and_one_the_worker_no_longer_has_is_resynced():
    source = publisher(buffer_steps=3)
    batches = [CLEARED, stored(0, 1, None), stored(1, 1, 0), stored(2, 1, 1), stored(3, 1, 2)]
    for events in batches[1:]:
        source.publish(events)  # sequences 1..4: 2, 3 and 4 buffered

    async def scenario():
        feed, index, _ = subscriber(KVEventSource(source.endpoint, source.replay_endpoint))
        await asyncio.sleep(0.2)
        await feed.receive(0, payload(CLEARED))
        await feed.receive(1, payload(batches[1]))
        await feed.receive(4, payload(batches[4]))  # 2 and 3 lost on the way: replayed
        assert (matched(index), feed.stats.replayed, feed.stats.resyncs) == (4, 2, 0)

        feed.expected = 1  # as if only batch 0 had been seen: batch 1 is no longer buffered
        await feed.receive(4, payload(stored(4, 1, None)))
        assert feed.stats.resyncs == 1 and index.size("w0") == 1 and matched(index) == 0

    try:
        asyncio.run(scenario())
    finally:
        source.close()


def test_without_a_replay_socket_a_gap_resyncs_and_a_restart_is_a_new_epoch():
    async def scenario():
        feed, index, worker = subscriber(KVEventSource("tcp://127.0.0.1:1"))
        await feed.receive(0, payload(CLEARED))
        await feed.receive(1, payload(stored(0, 2, None)))
        await feed.receive(3, payload(stored(2, 1, 1)))  # 2 lost, nobody to ask: resynced
        # the resync forgot the parent h1 too, so the store after the gap is skipped
        assert (feed.stats.resyncs, feed.stats.unplaced, index.size("w0")) == (1, 1, 0)
        await feed.receive(4, payload(stored(0, 3, None)))
        assert matched(index) == 3
        await feed.receive(0, payload(CLEARED))  # a fresh publisher: the worker restarted
        assert (feed.stats.epochs, worker.epoch, index.size("w0")) == (1, 1, 0)

    asyncio.run(scenario())


def test_a_stored_block_whose_parent_is_not_held_is_skipped():
    async def scenario():
        feed, index, _ = subscriber(KVEventSource("tcp://127.0.0.1:1"))
        await feed.receive(0, payload(stored(0, 2, None)))
        await feed.receive(1, payload(stored(3, 1, 2)))  # h2 is not held: no prompt could reach h3
        assert (feed.stats.unplaced, feed.stats.resyncs, index.size("w0")) == (1, 0, 2)

    asyncio.run(scenario())


def test_vllms_older_array_form_reads_the_same():
    async def scenario():
        feed, index, _ = subscriber(KVEventSource("tcp://127.0.0.1:1"))
        hashes = [11, 12, 13]  # vLLM's int hashes
        await feed.receive(0, payload([["BlockStored", hashes, None, TOKENS[:12], SIZE, None, "GPU"]]))
        assert matched(index) == 3
        await feed.receive(1, payload([["BlockRemoved", [12, 13], "GPU"]]))
        assert matched(index) == 1
        await feed.receive(2, payload([["AllBlocksCleared"]]))
        assert index.size("w0") == 0

    asyncio.run(scenario())


def test_an_engines_pool_records_its_prefix_cache_changes_as_vllm_events():
    from tokenworks.engine.kv_cache_manager import KVCacheManager
    from tokenworks.engine.request import Request
    from tokenworks.engine.sampling_params import SamplingParams

    manager = KVCacheManager(num_blocks=4, block_size=SIZE)
    manager.pool.events = []
    first = Request("a", TOKENS[:10], SamplingParams(max_tokens=1), frozenset())
    assert manager.allocate_slots(first, 10)
    (event,) = manager.pool.events
    assert (event["type"], len(event["block_hashes"]), event["parent_block_hash"]) == ("BlockStored", 2, None)
    assert event["token_ids"] == TOKENS[:8] and event["block_size"] == SIZE
    manager.free(first)
    manager.pool.events = []
    second = Request("b", [99] * 16, SamplingParams(max_tokens=1), frozenset())
    assert manager.allocate_slots(second, 16)  # 4 blocks: both of the first's cached ones evicted
    removed, stored_event = manager.pool.events
    assert removed == {"type": "BlockRemoved", "block_hashes": event["block_hashes"][::-1], "medium": "CPU"}
    assert stored_event["type"] == "BlockStored" and len(stored_event["block_hashes"]) == 4
    manager.free(second)
    manager.pool.events = []
    assert manager.reset_prefix_cache() and manager.pool.events == [{"type": "AllBlocksCleared"}]


def test_the_kv_events_config_reads_vllms_json_and_names_what_is_wrong(serve_model_dir):
    config = KVEventsConfig.from_json('{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", "topic": "kv"}')
    assert (config.publishing, config.endpoint, config.replay_endpoint, config.topic) == (
        True,
        "tcp://*:5557",
        None,
        "kv",
    )
    assert not KVEventsConfig.from_json('{"enable_kv_cache_events": true, "publisher": "null"}').publishing
    for text, message in (
        ("{", "the KV events config is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"enable_kv_cache_events": true, "endpont": "x"}', "unknown KV events config keys: endpont"),
        ('{"publisher": "kafka"}', "'zmq' or 'null'"),
    ):
        with pytest.raises(ValueError, match=message):
            KVEventsConfig.from_json(text)
    command = [
        sys.executable,
        "-m",
        "tokenworks",
        "serve",
        str(serve_model_dir),
        "--kv-events-config",
        '{"endpont": 1}',
    ]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "unknown KV events config keys: endpont" in answer.stderr
    assert "Traceback" not in answer.stderr
