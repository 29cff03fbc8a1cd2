"""The router's Prometheus metrics (`GET /metrics`), `tokenworks_router_*`.

Counters are kept as requests go (proxy.py, flight.py); the workers' gauges, the prefix index's
size and the KV event feeds' figures are read at each scrape, so they are never stale.
Prefix hits: `predicted_cached_tokens` is what the `kv` policy expected each worker to hold of
the prompts it sent there, `reported_cached_tokens` what the workers said they found
(`usage.prompt_tokens_details.cached_tokens`), over `prompt_tokens`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tokenworks.router.workers import WorkerPool


class RouterMetrics:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.index = None  # the kv policy's PrefixIndex, and its feeds' EventFeedStats, when kv routes
        self.feeds = None
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "tokenworks_router_requests", "Requests a worker answered, by worker and HTTP status.",
            ["worker", "status"], registry=registry,
        )  # fmt: skip
        self.decisions = Counter(
            "tokenworks_router_decisions",
            "Workers the policy chose, by policy, worker and reason (retries included).",
            ["policy", "worker", "reason"], registry=registry,
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
        tokens = ("prompt_tokens", "completion_tokens", "predicted_cached_tokens", "reported_cached_tokens")
        helps = (
            "Prompt tokens of answered requests (the workers' usage), by worker.",
            "Completion tokens of answered requests (the workers' usage), by worker.",
            "Prompt tokens the kv policy expected the worker to find cached, by worker.",
            "Prompt tokens the worker reported cached (usage.prompt_tokens_details.cached_tokens), by worker.",
        )
        for name, text in zip(tokens, helps, strict=True):
            setattr(self, name, Counter(f"tokenworks_router_{name}", text, ["worker"], registry=registry))
        self.in_flight = Gauge(
            "tokenworks_router_requests_in_flight", "The router's requests in flight, by worker.", ["worker"],
            registry=registry,
        )  # fmt: skip
        self.worker_up = Gauge(
            "tokenworks_router_worker_up", "1 while a worker may be chosen, 0 while its breaker is open.", ["worker"],
            registry=registry,
        )  # fmt: skip
        registry.register(_IndexCollector(self))

    def render(self) -> bytes:
        for worker in self.pool.workers:
            self.in_flight.labels(worker.url).set(worker.in_flight)
            self.worker_up.labels(worker.url).set(1 if worker.available else 0)
        return generate_latest(self.registry)


class _IndexCollector:
    """The prefix index and the event feeds, read when scraped."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        index, feeds, pool = self.metrics.index, self.metrics.feeds, self.metrics.pool
        if index is None:
            return
        blocks = GaugeMetricFamily(
            "tokenworks_router_index_blocks",
            "KV blocks the index holds confirmed by events, by worker.",
            labels=["worker"],
        )
        for worker in pool.workers:
            blocks.add_metric([worker.url], index.size(worker.id))
        yield blocks
        yield GaugeMetricFamily(
            "tokenworks_router_index_predicted_blocks", "Block keys predicted from recent decisions, not yet confirmed.",
            value=index.predicted_size(),
        )  # fmt: skip
        if feeds is None:
            return
        lag = GaugeMetricFamily(
            "tokenworks_router_kv_event_lag_seconds", "From a worker publishing its last KV event batch to the index "
            "applying it.", labels=["worker"],
        )  # fmt: skip
        urls = {worker.id: worker.url for worker in pool.workers}
        for worker_id, seconds in feeds.lag_s.items():
            if worker_id in urls:
                lag.add_metric([urls[worker_id]], seconds)
        yield lag
        for name, text in (
            ("kv_event_batches", "KV event batches applied."),
            ("kv_event_replayed", "KV event batches recovered from a worker's replay socket after a gap."),
            ("kv_event_resyncs", "Times a worker's index started afresh (events lost and not replayed)."),
            ("kv_event_epochs", "Worker restarts seen in KV events (their old blocks left the index)."),
            ("kv_event_unplaced", "Stored blocks skipped because their parent block was not in the index."),
        ):
            value = getattr(feeds, name.removeprefix("kv_event_"))
            yield CounterMetricFamily(f"tokenworks_router_{name}", text, value=value)
