"""The workers' KV events, read into the prefix index: one subscriber per worker that sends them.

A tokenworks worker says where it publishes (GET /kv_events); a vLLM worker's endpoints are
given with its URL (workers.py). Each subscriber reads the worker's ZMQ PUB socket and keeps
the index true to it, whatever happens on the way:
- a gap in the sequence numbers (batches lost, or sent before the router subscribed): the
  missing batches are asked for on the replay socket; if the worker has none, or no longer
  has them all, the worker is resynced: its entries are dropped and rebuilt from what comes;
- sequence 0 again, or a number going back: the worker restarted with an empty cache (a new
  epoch), so its old blocks leave the index at once;
- a store whose parent block the index does not hold is skipped: a lookup from the prompt's start
  could not reach it in the engine either (its parent was evicted while a duplicate of it, never
  registered, lived on), and lost events show as a gap in the numbers.
Both wire forms vLLM has used are read: events as maps tagged by `type` (vLLM 0.11 on, and
tokenworks) and as arrays led by the tag (earlier vLLM).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlparse

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from tokenworks.router.prefix_index import PrefixIndex
from tokenworks.router.workers import KVEventSource, Worker, WorkerPool

logger = logging.getLogger(__name__)

END_OF_REPLAY = -1
REPLAY_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name")


class EventFeedStats:
    """What the metrics show of the feeds: batches, resyncs, epochs, and each worker's lag."""

    def __init__(self) -> None:
        self.batches = 0
        self.replayed = 0
        self.resyncs = 0
        self.epochs = 0
        self.unplaced = 0  # stores skipped: their parent was not in the index
        self.lag_s: dict[str, float] = {}  # worker id -> seconds between a batch's publishing and its indexing


class KVEventFeeds:
    """Finds each worker's events, and keeps a subscriber running for every worker that sends them."""

    def __init__(self, pool: WorkerPool, index: PrefixIndex) -> None:
        self.pool, self.index = pool, index
        self.stats = EventFeedStats()
        self._tasks: dict[str, tuple[KVEventSource, asyncio.Task]] = {}
        self._context = zmq.asyncio.Context()
        for worker in pool.workers:
            self.watch(worker)

    def watch(self, worker: Worker) -> None:
        """A worker joins: its cache is indexed (and forgotten whenever it fails)."""
        self.index.add_worker(worker.id)
        worker.on_lost_cache = self._lost_cache

    def _lost_cache(self, worker: Worker) -> None:
        self.index.clear(worker.id)
        worker.epoch += 1
        if not worker.events_given:
            worker.probed = False  # a restarted worker may publish elsewhere: ask again once it answers

    def forget(self, worker: Worker) -> None:
        self.index.remove_worker(worker.id)
        feed = self._tasks.pop(worker.id, None)
        if feed is not None:
            feed[1].cancel()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe new (and recovered) workers, and (re)start their subscribers, for ever."""
        try:
            while True:
                for worker in list(self.pool.workers):
                    if worker.available and not worker.probed:
                        await self._probe(session, worker)
                    self._ensure_feed(worker)
                await asyncio.sleep(PROBE_INTERVAL_S)
        finally:
            for _, task in self._tasks.values():
                task.cancel()
            self._context.destroy(linger=0)

    async def _probe(self, session: aiohttp.ClientSession, worker: Worker) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        try:
            async with session.get(f"{worker.url}/kv_events", timeout=timeout) as response:
                answer = await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # asked again next round
        worker.probed = True
        worker.tokenizer = None
        if not isinstance(answer, dict):  # not a tokenworks worker: the router remembers what it sent
            return
        if isinstance(answer.get("block_size"), int):
            worker.block_size = answer["block_size"]
        if isinstance(answer.get("tokenizer"), str):
            worker.tokenizer = answer["tokenizer"]
        if answer.get("enable_kv_cache_events") and isinstance(answer.get("endpoint"), str):
            host = urlparse(worker.url).hostname or "127.0.0.1"
            replay = answer.get("replay_endpoint")
            worker.kv_events = KVEventSource(
                _reachable(answer["endpoint"], host), _reachable(replay, host) if replay else None,
                answer.get("topic") or "",
            )  # fmt: skip
        else:
            worker.kv_events = None

    def _ensure_feed(self, worker: Worker) -> None:
        running = self._tasks.get(worker.id)
        if running is not None and (running[0] != worker.kv_events or running[1].done()):
            running[1].cancel()
            running = None
            del self._tasks[worker.id]
        if running is None and worker.kv_events is not None:
            subscriber = Subscriber(worker, worker.kv_events, self.index, self.stats, self._context)
            self._tasks[worker.id] = (worker.kv_events, asyncio.ensure_future(subscriber.run()))


def _reachable(endpoint: str, host: str) -> str:
    """A bound endpoint (`tcp://*:5557`, `tcp://0.0.0.0:5557`) as the router can connect to it."""
    for wildcard in ("//*:", "//0.0.0.0:", "//[::]:"):
        endpoint = endpoint.replace(wildcard, f"//{host}:")
    return endpoint


class Subscriber:
    """One worker's event stream, applied to the index in order."""

    def __init__(
        self, worker: Worker, source: KVEventSource, index: PrefixIndex, stats: EventFeedStats,
        context: zmq.asyncio.Context,
    ) -> None:  # fmt: skip
        self.worker, self.source, self.index, self.stats, self.context = worker, source, index, stats, context
        self.expected: int | None = None  # the next sequence number; None before the first batch

    async def run(self) -> None:
        socket = self.context.socket(zmq.SUB)
        socket.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
        socket.connect(self.source.endpoint)
        logger.info("reading KV events of %s from %s", self.worker.url, self.source.endpoint)
        try:
            while True:
                frames = await socket.recv_multipart()
                if len(frames) != 3:
                    continue
                await self.receive(int.from_bytes(frames[1], "big", signed=True), frames[2])
        finally:
            socket.close(linger=0)

    async def receive(self, sequence: int, payload: bytes) -> None:
        if self.expected is not None and sequence < self.expected:
            self.new_epoch()  # a fresh publisher: the worker restarted
        elif sequence > (self.expected or 0):
            await self.catch_up(self.expected or 0, sequence)
        self.apply(payload)
        self.expected = sequence + 1

    def new_epoch(self) -> None:
        self.index.clear(self.worker.id)
        self.worker.epoch += 1
        self.stats.epochs += 1
        logger.info("%s restarted: its cache left the index", self.worker.url)

    def resync(self, why: str) -> None:
        """Start the worker's entries afresh: what comes next is known, what it held before is not."""
        self.index.clear(self.worker.id)
        self.stats.resyncs += 1
        logger.warning("KV events of %s: %s; its index starts afresh", self.worker.url, why)

    async def catch_up(self, first: int, upto: int) -> None:
        """Apply the batches first..upto-1 from the replay socket, or resync without them."""
        batches = await self.replayed(first) if self.source.replay_endpoint else None
        complete = bool(batches) and batches[0][0] <= first and batches[-1][0] >= upto - 1
        if not complete:
            if first > 0:  # a worker first heard mid-stream had nothing indexed to lose
                self.resync(f"batches {first}..{upto - 1} missed and not replayed")
            return
        for sequence, payload in batches:
            if first <= sequence < upto:
                self.apply(payload)
                self.stats.replayed += 1

    async def replayed(self, first: int) -> list[tuple[int, bytes]] | None:
        """The worker's buffered batches from `first` on; None when it does not answer in time."""
        socket = self.context.socket(zmq.DEALER)
        socket.connect(self.source.replay_endpoint)
        batches: list[tuple[int, bytes]] = []
        try:
            await socket.send_multipart((b"", first.to_bytes(8, "big")))
            while True:
                if not await socket.poll(REPLAY_TIMEOUT_S * 1000):
                    return None
                frames = await socket.recv_multipart()
                if len(frames) != 4:
                    continue
                sequence = int.from_bytes(frames[2], "big", signed=True)
                if sequence == END_OF_REPLAY:
                    return batches
                batches.append((sequence, frames[3]))
        finally:
            socket.close(linger=0)

    def apply(self, payload: bytes) -> None:
        try:
            batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            published, events = batch[0], batch[1]
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as error:
            logger.warning("unreadable KV event batch from %s: %s", self.worker.url, error)
            return
        self.stats.batches += 1
        self.stats.lag_s[self.worker.id] = max(0.0, time.time() - float(published))
        for event in events:
            kind, fields = _event_fields(event)
            if kind == "BlockStored":
                self._stored(fields)
            elif kind == "BlockRemoved":
                self.index.removed(self.worker.id, [_hashable(h) for h in fields.get("block_hashes") or []])
            elif kind == "AllBlocksCleared":
                self.index.clear(self.worker.id)

    def _stored(self, fields: dict) -> None:
        block_size = fields.get("block_size")
        if not isinstance(block_size, int) or block_size < 1:
            return
        self.worker.block_size = block_size
        parent = fields.get("parent_block_hash")
        placed = self.index.stored(
            self.worker.id, [_hashable(h) for h in fields.get("block_hashes") or []],
            _hashable(parent) if parent is not None else None, fields.get("token_ids") or [], block_size,
            fields.get("lora_name"),
        )  # fmt: skip
        if not placed:
            self.stats.unplaced += 1


def _event_fields(event: object) -> tuple[str | None, dict]:
    """(type, fields) of an event in either wire form."""
    if isinstance(event, dict):
        return event.get("type"), event
    if isinstance(event, list) and event and isinstance(event[0], str):
        kind = event[0]
        names = _STORED_FIELDS if kind == "BlockStored" else ("block_hashes", "medium")
        return kind, dict(zip(names, event[1:], strict=False))
    return None, {}


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value
