"""Publishing the prefix cache's changes over ZMQ, in the layout of vLLM's KV events.

After each step, once the step's outputs are sent, the engine hands the events its block pool
recorded (block_pool.py) to `KVEventPublisher.publish`, which only queues them: a thread
encodes and sends, so a step never waits on a socket (and a batch never runs ahead of the
tokens of its step: EngineCore.publish_kv_events). On the wire, as vLLM's `ZmqEventPublisher` sends them:
- PUB socket: multipart (topic, sequence number as 8 bytes big-endian, payload), the payload
  a msgpack array `[timestamp, [event, ...], data_parallel_rank]` and each event a map tagged
  by `type` (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`);
- ROUTER socket (replay): a subscriber that saw a gap in the sequence numbers sends the first
  number it lacks (8 bytes big-endian) and gets every batch still buffered from there, each as
  (topic, sequence, payload), then an end marker (empty topic, sequence -1, empty payload).

The first batch a publisher sends (sequence 0) is `AllBlocksCleared`: a subscriber that sees
sequence 0 again knows the engine restarted with an empty cache (a new epoch).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import msgpack
import zmq

from tokenworks.engine.options import KVEventsConfig

logger = logging.getLogger(__name__)

END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
_POLL_S = 0.05


class KVEventPublisher:
    def __init__(self, config: KVEventsConfig) -> None:
        self.config = config
        self._queue: queue.Queue[list[dict] | None] = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._topic = config.topic.encode()
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self.endpoint: str | None = None  # as bound: a port given as * is the one the system chose
        self.replay_endpoint: str | None = None
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            raise ValueError(f"cannot publish KV events at {config.endpoint}: {self._error}") from self._error
        self.publish([{"type": "AllBlocksCleared"}])  # sequence 0: a new epoch

    def publish(self, events: list[dict]) -> None:
        """Queue one batch (the events of one step); dropped, with a warning, if the queue is full."""
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            logger.warning("KV events queue full: a batch of %d events dropped", len(events))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2.0)

    def describe(self) -> dict:
        """The endpoints as bound, in vLLM's config keys (what GET /kv_events answers)."""
        return {
            "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint, "topic": self.config.topic,
        }  # fmt: skip

    # ---- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        context = zmq.Context.instance()
        publisher = context.socket(zmq.PUB)
        replay = context.socket(zmq.ROUTER) if self.config.replay_endpoint else None
        try:
            publisher.set_hwm(self.config.hwm)
            self.endpoint = _bind(publisher, self.config.endpoint)
            if replay is not None:
                self.replay_endpoint = _bind(replay, self.config.replay_endpoint)
        except zmq.ZMQError as error:
            self._error = error
            self._bound.set()
            publisher.close(linger=0)
            if replay is not None:
                replay.close(linger=0)
            return
        self._bound.set()
        sequence = 0
        try:
            while True:
                if replay is not None and replay.poll(0):
                    self._answer_replay(replay)
                try:
                    events = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if events is None:
                    return
                payload = msgpack.packb([time.time(), events, 0])
                publisher.send_multipart((self._topic, sequence.to_bytes(8, "big"), payload))
                self._buffer.append((sequence, payload))
                sequence += 1
        finally:
            publisher.close(linger=0)
            if replay is not None:
                replay.close(linger=0)

    def _answer_replay(self, replay: zmq.Socket) -> None:
        frames = replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            logger.warning("malformed KV events replay request (%d frames)", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for sequence, payload in list(self._buffer):
            if sequence >= first:
                replay.send_multipart((client, b"", self._topic, sequence.to_bytes(8, "big"), payload))
        replay.send_multipart((client, b"", b"", END_OF_REPLAY, b""))


def _bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind; a port of `*` or 0 takes a free one. Returns the endpoint as bound."""
    base, _, port = endpoint.rpartition(":")
    if endpoint.startswith("tcp://") and port in ("*", "0"):
        chosen = socket.bind_to_random_port(base)
        return f"{base}:{chosen}"
    socket.bind(endpoint)
    return endpoint
