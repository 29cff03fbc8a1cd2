"""The workers behind the router: where they are, whether they answer, and how busy they are.

Each worker has the requests the router has in flight on it (its load, as the router sees it)
and a circuit breaker: a worker that fails a request or a health check is skipped until its
backoff has passed (doubling from BACKOFF_S up to MAX_BACKOFF_S with each failure in a row),
then tried again; a success closes the breaker. The health loop asks every worker's /health
each HEALTH_INTERVAL_S, so a dead worker leaves the candidates within a second and a restarted
one comes back on its own.

A worker is given by its URL, optionally followed by where it publishes KV events, for a
worker the router cannot ask (vLLM started with `--kv-events-config`):
`http://host:8001,kv_events=tcp://host:5557,replay=tcp://host:5558,block_size=16`.
A tokenworks worker says so itself (GET /kv_events), found when it first answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tokenworks.router.estimates import LinearEstimate

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 0.5
HEALTH_TIMEOUT_S = 1.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# Priors of what the router learns (estimates.py), until a worker has answered a few requests:
# a turn of 10 ms plus 100 us per prefill token, and 20 ms per output token plus 1 ms for each
# other request decoding. Every worker starts with the same, so they only break ties.
TTFT_PRIOR = (0.010, 1e-4)
TPOT_PRIOR = (0.020, 1e-3)


@dataclass(slots=True)
class KVEventSource:
    """Where a worker publishes its KV events (ZMQ), as vLLM's --kv-events-config names them."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


# slots: the kv policy's compiled pricing reads each candidate's loads straight from them (_blocks.c)
@dataclass(eq=False, slots=True)
class Worker:
    url: str  # the worker's root, without /v1
    id: str
    in_flight: int = 0  # requests the router has sent it and not yet seen answered in full
    failures: int = 0  # in a row; 0 while healthy
    skip_until: float = 0.0  # time.monotonic() before which the breaker keeps it out
    served: int = 0  # requests it answered (for /workers and tests)
    last_error: str | None = None
    # What the kv policy knows of it: its blocks' size, where its events come from (None: it sends
    # none, so the router remembers what it sent there), the prefill tokens of its requests not
    # yet started, the requests it is decoding, and what it learnt of its speed.
    block_size: int | None = None
    kv_events: KVEventSource | None = None
    probed: bool = False  # its /kv_events asked (or its events given on the command line)
    events_given: bool = False  # where its events come from was given with its URL
    tokenizer: str | None = None  # its tokenizer's fingerprint (its /kv_events), see serve/pretokenized.py
    pending_prefill_tokens: int = 0
    prefill_tokens_sent: int = 0  # ever, uncached as predicted: what arrived while a request decoded (flight.py)
    decoding: int = 0
    ttft: LinearEstimate = field(default_factory=lambda: LinearEstimate(*TTFT_PRIOR))
    tpot: LinearEstimate = field(default_factory=lambda: LinearEstimate(*TPOT_PRIOR))
    epoch: int = 0  # caches it started afresh with (a restart, or the router lost track of it)
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA name -> path, as the router loaded them (adapters.py)

    on_lost_cache: Callable[[Worker], None] | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.skip_until

    def failed(self, reason: str) -> None:
        if self.failures == 0:  # down, maybe restarting: whatever it held is not to be counted on
            self.adapters.clear()
            if self.on_lost_cache is not None:
                self.on_lost_cache(self)
        self.failures += 1
        self.last_error = reason
        backoff = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (self.failures - 1))
        self.skip_until = time.monotonic() + backoff
        logger.warning("worker %s failed (%s): skipped for %.1f s", self.url, reason, backoff)

    def succeeded(self) -> None:
        if self.failures:
            logger.info("worker %s answers again", self.url)
        self.failures, self.skip_until, self.last_error = 0, 0.0, None

    def describe(self) -> dict:
        ttft_a, ttft_b = self.ttft.a, self.ttft.b  # its own fit (the prior before one)
        tpot_a, tpot_b = self.tpot.a, self.tpot.b
        return {
            "id": self.id, "url": self.url, "healthy": self.available, "in_flight": self.in_flight,
            "served": self.served, "failures": self.failures, "last_error": self.last_error,
            "block_size": self.block_size, "kv_events": self.kv_events.endpoint if self.kv_events else None,
            "tokenizer": self.tokenizer,
            "epoch": self.epoch, "pending_prefill_tokens": self.pending_prefill_tokens, "decoding": self.decoding,
            "prefill_tokens_per_s": round(1 / ttft_b) if ttft_b > 0 else None, "turn_s": round(ttft_a, 6),
            "tpot_s": round(tpot_a + tpot_b * max(self.decoding, 1), 6),
            "tpot_per_decoding_s": round(tpot_b, 6),  # the decode guard's slope (e in docs/router.md)
        }  # fmt: skip


@dataclass
class WorkerPool:
    workers: list[Worker] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(0))

    @classmethod
    def of(cls, urls: list[str]) -> WorkerPool:
        pool = cls()
        for url in urls:
            pool.add(url)
        return pool

    def add(self, spec: str) -> Worker:
        """A worker from its URL, or its URL and KV events (see the module's docstring)."""
        url, events, block_size = parse_worker_spec(spec)
        if any(worker.url == url for worker in self.workers):
            raise ValueError(f"{url} is a worker already")
        given = events is not None
        worker = Worker(
            url, f"w{next(self._ids)}", block_size=block_size, kv_events=events, probed=given, events_given=given
        )
        self.workers.append(worker)
        return worker

    def remove(self, worker_id: str) -> Worker:
        for worker in self.workers:
            if worker.id == worker_id:
                self.workers.remove(worker)
                return worker
        raise KeyError(worker_id)

    def candidates(self, excluded: set[str] = frozenset()) -> list[Worker]:
        """The workers a request may go to now: available, and not already tried by it."""
        return [worker for worker in self.workers if worker.available and worker.id not in excluded]

    async def watch_health(self, session: aiohttp.ClientSession) -> None:
        """Check every worker's /health, for ever (the app cancels it at shutdown)."""
        while True:
            await asyncio.gather(*(self._check(session, worker) for worker in list(self.workers)))
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def _check(self, session: aiohttp.ClientSession, worker: Worker) -> None:
        if not worker.available:
            return  # its breaker is open: the first check after the backoff decides
        reason = None
        try:
            timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
            async with session.get(f"{worker.url}/health", timeout=timeout) as response:
                if response.status != 200:
                    reason = f"/health answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"/health: {type(error).__name__}"
        if reason is None:
            worker.succeeded()
        else:
            worker.failed(reason)


def parse_worker_spec(spec: str) -> tuple[str, KVEventSource | None, int | None]:
    """`URL[,kv_events=ENDPOINT][,replay=ENDPOINT][,block_size=N]` as (url, events, block size)."""
    url, *options = [part.strip() for part in spec.split(",")]
    values: dict[str, str] = {}
    for option in options:
        name, equals, value = option.partition("=")
        if not equals or name not in ("kv_events", "replay", "block_size"):
            raise ValueError(f"unknown worker option {option!r}: give kv_events=, replay= or block_size=")
        values[name] = value
    block_size = None
    if "block_size" in values:
        if not values["block_size"].isdigit() or int(values["block_size"]) < 1:
            raise ValueError(f"block_size must be a positive integer, got {values['block_size']!r}")
        block_size = int(values["block_size"])
    if "replay" in values and "kv_events" not in values:
        raise ValueError("replay= needs kv_events= (the endpoint events are published at)")
    events = KVEventSource(values["kv_events"], values.get("replay")) if "kv_events" in values else None
    return normalized_url(url), events, block_size


def normalized_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a worker is an http:// or https:// URL, got {url!r}")
    return url
