"""Prometheus metrics, named like vLLM's with a `tokenworks:` prefix, in the server's own registry.

Counters and histograms are fed by each request as it is served (`RequestTracker`);
the gauges (running, waiting, KV cache usage, prefix-cache hit rate) are read from the
engine's step statistics when /metrics is scraped.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tokenworks.engine import RequestOutput
from tokenworks.engine.messages import StepStats

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
KNOWN_PATHS = frozenset(
    [
        "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize",
        "/dashboard", "/dashboard/data",
    ]
)  # fmt: skip


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        self.model_name = model_name
        m = ["model_name"]
        self.http_requests = Counter(
            "tokenworks:http_requests", "HTTP requests answered, by method, route and status code.",
            ["method", "path", "status"], registry=registry,
        )  # fmt: skip
        self.request_success = Counter(
            "tokenworks:request_success", "Generation requests (choices) finished, by finish reason.",
            ["model_name", "finished_reason"], registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter("tokenworks:prompt_tokens", "Prompt tokens processed.", m, registry=registry)
        self.cached_prompt_tokens = Counter(
            "tokenworks:prompt_tokens_cached", "Prompt tokens served from the prefix cache.", m, registry=registry
        )
        self.generation_tokens = Counter("tokenworks:generation_tokens", "Tokens generated.", m, registry=registry)
        self.ttft = Histogram(
            "tokenworks:time_to_first_token_seconds", "From the request's arrival to its first token.", m,
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.itl = Histogram(
            "tokenworks:inter_token_latency_seconds", "Between successive output tokens of a request.", m,
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.e2e = Histogram(
            "tokenworks:e2e_request_latency_seconds", "From the request's arrival to its last token.", m,
            buckets=_E2E_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_time = Histogram(
            "tokenworks:request_queue_time_seconds", "Time a request waited in the engine before it was scheduled.",
            m, buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.request_prompt_tokens = Histogram(
            "tokenworks:request_prompt_tokens", "Prompt tokens per request.", m, buckets=_TOKEN_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.request_generation_tokens = Histogram(
            "tokenworks:request_generation_tokens", "Generated tokens per request.", m, buckets=_TOKEN_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.num_running = Gauge(
            "tokenworks:num_requests_running", "Requests in the engine's batch.", m, registry=registry
        )
        self.num_waiting = Gauge(
            "tokenworks:num_requests_waiting", "Requests waiting for the engine to schedule them.", m, registry=registry
        )
        self.num_open = Gauge(
            "tokenworks:num_requests_open", "Requests the server has admitted and not finished.", m, registry=registry
        )
        self.kv_cache_usage = Gauge(
            "tokenworks:kv_cache_usage_perc", "Share of KV cache blocks in use, 0 to 1.", m, registry=registry
        )
        self.prefix_cache_hit_rate = Gauge(
            "tokenworks:prefix_cache_hit_rate", "Prefix-cache hits per query since start, 0 to 1.", m, registry=registry
        )
        self.prefix_cache_queries = Gauge(
            "tokenworks:prefix_cache_queries", "Prompt tokens looked up in the prefix cache since start.", m,
            registry=registry,
        )  # fmt: skip
        self.prefix_cache_hits = Gauge(
            "tokenworks:prefix_cache_hits", "Prompt tokens found in the prefix cache since start.", m, registry=registry
        )
        self.num_preemptions = Gauge(
            "tokenworks:num_preemptions", "Requests preempted since start.", m, registry=registry
        )
        self.engine_healthy = Gauge(
            "tokenworks:engine_healthy", "1 while the engine core is alive, else 0.", m, registry=registry
        )
        self.engine_restarts = Counter(
            "tokenworks:engine_restarts", "Engine cores started in place of a dead one (--restart-engine).", m,
            registry=registry,
        )  # fmt: skip

    def update_engine(self, stats: StepStats | None, healthy: bool, num_open: int) -> None:
        name = self.model_name
        self.engine_healthy.labels(name).set(1 if healthy else 0)
        self.num_open.labels(name).set(num_open)
        if stats is None:
            return
        s = stats.scheduler
        self.num_running.labels(name).set(s.num_running)
        self.num_waiting.labels(name).set(s.num_waiting)
        self.kv_cache_usage.labels(name).set(s.kv_cache_usage)
        self.prefix_cache_queries.labels(name).set(s.prefix_cache_queries)
        self.prefix_cache_hits.labels(name).set(s.prefix_cache_hits)
        self.prefix_cache_hit_rate.labels(name).set(
            s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        )
        self.num_preemptions.labels(name).set(s.num_preemptions)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Feeds one engine request's latencies and token counts into the metrics as it runs."""

    def __init__(self, metrics: ServerMetrics, arrival: float) -> None:
        self.metrics, self.arrival = metrics, arrival
        self.last_token_time: float | None = None
        self.output: RequestOutput | None = None

    def observe(self, output: RequestOutput) -> None:
        self.output = output
        if not output.delta_token_ids:
            return
        now = time.monotonic()
        name = self.metrics.model_name
        # Counted as tokens arrive, not at the end, so the counter's rate is live throughput.
        self.metrics.generation_tokens.labels(name).inc(len(output.delta_token_ids))
        if self.last_token_time is None:
            self.metrics.ttft.labels(name).observe(now - self.arrival)
        else:
            gap = (now - self.last_token_time) / len(output.delta_token_ids)
            for _ in output.delta_token_ids:
                self.metrics.itl.labels(name).observe(gap)
        self.last_token_time = now

    def finish(self) -> None:
        """At the end, finished or not (a client that went away counts as `abort`)."""
        output = self.output
        if output is None:
            return
        m, name = self.metrics, self.metrics.model_name
        m.request_success.labels(name, output.finish_reason or "abort").inc()
        m.prompt_tokens.labels(name).inc(len(output.prompt_token_ids))
        m.cached_prompt_tokens.labels(name).inc(output.num_cached_tokens)
        m.request_prompt_tokens.labels(name).observe(len(output.prompt_token_ids))
        m.request_generation_tokens.labels(name).observe(len(output.token_ids))
        m.e2e.labels(name).observe(time.monotonic() - self.arrival)
        if output.metrics.queue_time is not None:
            m.queue_time.labels(name).observe(max(0.0, output.metrics.queue_time))


class HTTPMetricsMiddleware:
    """Counts every HTTP answer by method, route and status (unknown routes as one label)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.http_requests.labels(scope["method"], path, str(status or 500)).inc()
