"""The workers behind the router: where they are, whether they answer, and how busy they are.

Each worker has the requests the router has in flight on it (its load, as the router sees it)
and a circuit breaker: a worker that fails a request or a health check is skipped until its
backoff has passed (doubling from BACKOFF_S up to MAX_BACKOFF_S with each failure in a row),
then tried again; a success closes the breaker. The health loop asks every worker's /health
each HEALTH_INTERVAL_S, so a dead worker leaves the candidates within a second and a restarted
one comes back on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import aiohttp

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 0.5
HEALTH_TIMEOUT_S = 1.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass(eq=False)
class Worker:
    url: str  # the worker's root, without /v1
    id: str
    in_flight: int = 0  # requests the router has sent it and not yet seen answered in full
    failures: int = 0  # in a row; 0 while healthy
    skip_until: float = 0.0  # time.monotonic() before which the breaker keeps it out
    served: int = 0  # requests it answered (for /workers and tests)
    last_error: str | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.skip_until

    def failed(self, reason: str) -> None:
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
        return {
            "id": self.id, "url": self.url, "healthy": self.available, "in_flight": self.in_flight,
            "served": self.served, "failures": self.failures, "last_error": self.last_error,
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

    def add(self, url: str) -> Worker:
        url = normalized_url(url)
        if any(worker.url == url for worker in self.workers):
            raise ValueError(f"{url} is a worker already")
        worker = Worker(url, f"w{next(self._ids)}")
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


def normalized_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a worker is an http:// or https:// URL, got {url!r}")
    return url
