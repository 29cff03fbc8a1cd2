"""GET /dashboard: the router's workers at a glance, and GET /dashboard/data behind it.

Per worker: health, requests in flight and decoding, prefill waiting, requests answered, what
the router learnt of its speed, its KV blocks in the index, and the prefix hits the policy
predicted against those the worker reported. Open, as /metrics is (no API key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()
_PAGE = (Path(__file__).with_name("dashboard.html")).read_text()


def _counter_by_worker(counter) -> dict[str, float]:
    values: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                values[sample.labels["worker"]] = sample.value
    return values


def dashboard_data(routing) -> dict[str, Any]:
    metrics, index = routing.metrics, routing.feeds.index if routing.feeds is not None else None
    prompt = _counter_by_worker(metrics.prompt_tokens)
    predicted = _counter_by_worker(metrics.predicted_cached_tokens)
    reported = _counter_by_worker(metrics.reported_cached_tokens)
    workers = []
    for worker in routing.pool.workers:
        row = worker.describe()
        tokens = prompt.get(worker.url, 0.0)
        row["prompt_tokens"] = tokens
        row["reported_hit_rate"] = reported.get(worker.url, 0.0) / tokens if tokens else None
        row["predicted_hit_rate"] = predicted.get(worker.url, 0.0) / tokens if tokens else None
        row["index_blocks"] = index.size(worker.id) if index is not None else None
        workers.append(row)
    return {"policy": routing.policy.name, "tokenizer": routing.prompts.source, "workers": workers}


@router.get("/dashboard", response_class=HTMLResponse, summary="A live view of the router's workers.")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/dashboard/data", summary="The dashboard's figures: each worker's load, speed and prefix hits.")
async def data(request: Request) -> dict[str, Any]:
    return dashboard_data(request.app.state.routing)
