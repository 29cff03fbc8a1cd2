"""The live dashboard: `GET /dashboard` (one self-contained page) and `GET /dashboard/data` (what it shows).

The page polls /dashboard/data every second. That endpoint reads the same Prometheus
registry /metrics renders, so every figure on the page equals a /metrics value or a
`histogram_quantile` over its buckets (percentiles are since the server started); only
the output throughput is the page's own, the generation-token counter's rate between
two polls. The latest Pareto frontier is `--bench-results DIR/frontier.csv`, read on every
poll so a benchmark's result appears as soon as it is written. Like /metrics, both
routes stay open when the server has an API key.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry

from tokenworks.serve.metrics import ServerMetrics
from tokenworks.serve.status import refresh_engine_gauges

FRONTIER_FILE = "frontier.csv"
FRONTIER_COLUMNS = ("label", "concurrency", "request_rate", "interactivity", "output_throughput_per_device")
MAX_FRONTIER_BYTES = 2**20  # read every second: a frontier is tens of rows, not megabytes
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
LATENCIES = {
    "ttft": "tokenworks:time_to_first_token_seconds",
    "itl": "tokenworks:inter_token_latency_seconds",
    "e2e": "tokenworks:e2e_request_latency_seconds",
}
FINISH_REASONS = ("stop", "length", "abort")
_PAGE = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")

router = APIRouter()


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram, interpolated linearly within its bucket as Prometheus' histogram_quantile.

    `buckets` are (upper bound, cumulative count) sorted by bound, the last one +Inf.
    None when nothing was observed. A rank in the +Inf bucket gives the highest finite
    bound; the first bucket's lower bound is 0 (latencies are not negative).
    """
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return None
    rank = q * total
    index = next(i for i, (_, count) in enumerate(buckets) if count >= rank or i == len(buckets) - 1)
    if index == len(buckets) - 1:
        return buckets[-2][0] if len(buckets) > 1 else None
    upper, count = buckets[index]
    lower, below = buckets[index - 1] if index > 0 else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (count - below)


@dataclass(slots=True)
class FrontierPoint:
    label: str
    concurrency: float | None
    request_rate: float | None
    interactivity: float  # output tokens/s per user
    output_throughput_per_device: float  # output tokens/s per device


@dataclass(slots=True)
class Frontier:
    points: list[FrontierPoint]
    message: str | None  # why there are no points, or what is wrong with the file
    path: str | None
    modified: float | None  # the file's mtime, seconds since the epoch


def read_frontier(directory: Path | None) -> Frontier:
    """The points of DIRECTORY/frontier.csv; never raises: what is missing or malformed becomes the message."""
    if directory is None:
        return Frontier([], "no benchmark results: start the server with --bench-results DIR", None, None)
    path = Path(directory) / FRONTIER_FILE
    try:
        stat = path.stat()
        if stat.st_size > MAX_FRONTIER_BYTES:
            raise _Malformed(f"is {stat.st_size} bytes; the dashboard reads frontier files of up to 1 MiB")
        points = _parse_frontier(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Frontier([], f"no benchmark yet: {path} does not exist", str(path), None)
    except (OSError, UnicodeDecodeError) as error:
        return Frontier([], f"{path} cannot be read: {error}", str(path), None)
    except _Malformed as error:
        return Frontier([], f"{path} {error}", str(path), stat.st_mtime)
    message = None if points else f"{path} has no points yet"
    return Frontier(points, message, str(path), stat.st_mtime)


class _Malformed(Exception):
    """What is wrong with a frontier file, said after its path."""


def _parse_frontier(text: str) -> list[FrontierPoint]:
    reader = csv.DictReader(io.StringIO(text), strict=True)
    try:
        missing = [c for c in FRONTIER_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            expected = ",".join(FRONTIER_COLUMNS)
            raise _Malformed(f"lacks the column(s) {', '.join(missing)}: its header must name {expected}")
        return [_point(row, reader.line_num) for row in reader]
    except csv.Error as error:
        raise _Malformed(f"line {reader.reader.line_num} is not valid CSV: {error}") from None


def _point(row: dict[str, str | None], line: int) -> FrontierPoint:
    return FrontierPoint(
        label=row["label"] or "",
        concurrency=_number(row, "concurrency", line, required=False),
        request_rate=_number(row, "request_rate", line, required=False),
        interactivity=_number(row, "interactivity", line, required=True),
        output_throughput_per_device=_number(row, "output_throughput_per_device", line, required=True),
    )


def _number(row: dict[str, str | None], column: str, line: int, required: bool) -> float | None:
    text = (row.get(column) or "").strip()
    if not text and not required:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _Malformed(f"line {line}: {column} {text!r} is not a finite number")
    return value


class _Samples:
    """The registry's samples by name, as /metrics would render them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in registry.collect():
            for sample in family.samples:
                self.by_name[sample.name].append((sample.labels, sample.value))

    def total(self, name: str, **labels: str) -> float:
        return sum(v for have, v in self.by_name[name] if all(have.get(k) == x for k, x in labels.items()))

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        counts: dict[float, float] = defaultdict(float)
        for labels, value in self.by_name[f"{histogram}_bucket"]:
            counts[float(labels["le"])] += value
        return sorted(counts.items())


def dashboard_data(metrics: ServerMetrics, bench_results: Path | None) -> dict[str, Any]:
    """Every figure the page shows, from the metrics registry (gauges as last refreshed) and the frontier file."""
    s = _Samples(metrics.registry)
    latency = {}
    for key, name in LATENCIES.items():
        buckets = s.buckets(name)
        quantiles = {label: histogram_quantile(q, buckets) for label, q in QUANTILES.items()}
        latency[key] = {"count": s.total(f"{name}_count"), **quantiles}
    finished = {r: s.total("tokenworks:request_success_total", finished_reason=r) for r in FINISH_REASONS}
    http_errors = sum(v for labels, v in s.by_name["tokenworks:http_requests_total"] if int(labels["status"]) >= 400)
    return {
        "time": time.monotonic(),  # for the throughput: the generation-token counter's rate between polls
        "model": metrics.model_name,
        "engine_healthy": s.total("tokenworks:engine_healthy") == 1,
        "running": s.total("tokenworks:num_requests_running"),
        "waiting": s.total("tokenworks:num_requests_waiting"),
        "open": s.total("tokenworks:num_requests_open"),
        "kv_cache_usage": s.total("tokenworks:kv_cache_usage_perc"),
        "prefix_cache_hit_rate": s.total("tokenworks:prefix_cache_hit_rate"),
        "finished": {**finished, "total": s.total("tokenworks:request_success_total")},
        "prompt_tokens": s.total("tokenworks:prompt_tokens_total"),
        "cached_prompt_tokens": s.total("tokenworks:prompt_tokens_cached_total"),
        "generation_tokens": s.total("tokenworks:generation_tokens_total"),
        "http_errors": http_errors,
        "latency": latency,
        "frontier": dataclasses.asdict(read_frontier(bench_results)),
    }


@router.get("/dashboard", response_class=HTMLResponse, summary="A live dashboard of this server's metrics.")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/dashboard/data", summary="The dashboard's figures: metrics, percentiles and the benchmark frontier.")
async def data(request: Request) -> dict[str, Any]:
    state = request.app.state.server
    await refresh_engine_gauges(state)
    return dashboard_data(state.metrics, state.config.bench_results)
