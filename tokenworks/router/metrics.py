"""The router's Prometheus metrics (`GET /metrics`), `tokenworks_router_*`.

Counters are kept as requests go (proxy.py); the workers' gauges are read from the pool at each
scrape, so they are never stale.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tokenworks.router.workers import WorkerPool


class RouterMetrics:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "tokenworks_router_requests", "Requests a worker answered, by worker and HTTP status.",
            ["worker", "status"], registry=registry,
        )  # fmt: skip
        self.decisions = Counter(
            "tokenworks_router_decisions", "Workers the policy chose, by policy and worker (retries included).",
            ["policy", "worker"], registry=registry,
        )  # fmt: skip
        self.failovers = Counter(
            "tokenworks_router_failovers", "Requests sent to another worker after one failed before answering.",
            registry=registry,
        )  # fmt: skip
        self.no_worker = Counter(
            "tokenworks_router_no_worker", "Requests answered 503 because no worker could take them.", registry=registry
        )
        self.broken_streams = Counter(
            "tokenworks_router_broken_streams", "Streams a worker broke after they had started.", ["worker"],
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "tokenworks_router_requests_in_flight", "The router's requests in flight, by worker.", ["worker"],
            registry=registry,
        )  # fmt: skip
        self.worker_up = Gauge(
            "tokenworks_router_worker_up", "1 while a worker may be chosen, 0 while its breaker is open.", ["worker"],
            registry=registry,
        )  # fmt: skip

    def render(self) -> bytes:
        for worker in self.pool.workers:
            self.in_flight.labels(worker.url).set(worker.in_flight)
            self.worker_up.labels(worker.url).set(1 if worker.available else 0)
        return generate_latest(self.registry)
