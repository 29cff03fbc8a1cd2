"""Metrics move as requests are served; 200 concurrent streams with random disconnects leave no KV blocks."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

from .conftest import metric_value

NAME = {"model_name": "nano-test"}


def test_metrics_move_as_requests_are_served(http) -> None:
    before = http.get("/metrics").text
    result = http.post("/v1/completions", json={"prompt": "Hello there", "max_tokens": 5, "ignore_eos": True}).json()
    assert result["usage"]["completion_tokens"] == 5
    http.post("/v1/completions", json={"prompt": "hi", "model": "missing"})
    after = http.get("/metrics").text
    delta = lambda name, labels=NAME: metric_value(after, name, labels) - metric_value(before, name, labels)  # noqa: E731
    assert delta("tokenworks:generation_tokens_total") == 5
    assert delta("tokenworks:prompt_tokens_total") == result["usage"]["prompt_tokens"]
    assert delta("tokenworks:request_success_total", {"finished_reason": "length"}) == 1
    assert delta("tokenworks:time_to_first_token_seconds_count") == 1
    assert delta("tokenworks:inter_token_latency_seconds_count") == 4
    assert delta("tokenworks:e2e_request_latency_seconds_count") == 1
    assert delta("tokenworks:request_queue_time_seconds_count") == 1
    assert delta("tokenworks:http_requests_total", {"path": "/v1/completions", "status": "200"}) == 1
    assert delta("tokenworks:http_requests_total", {"path": "/v1/completions", "status": "404"}) == 1
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate"):
        assert f"tokenworks:{gauge}{{" in after


def test_200_streams_with_random_disconnects(server, http) -> None:
    rng = random.Random(0)
    plans = [rng.choice([None, None, 0, 1, 3]) for _ in range(200)]  # chunks to read before leaving; None: all

    async def one(client: httpx.AsyncClient, index: int, leave_after: int | None):
        body = {
            "prompt": f"Request number {index} asks for", "max_tokens": 16 + index % 8, "ignore_eos": True,
            "stream": True, "temperature": 0.7, "seed": index,
        }  # fmt: skip
        finish = None
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                if leave_after is not None and seen >= leave_after:
                    return None  # leaving the block closes the connection mid-stream
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                seen += 1
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                finish = chunk["choices"][0]["finish_reason"] or finish
        return finish, body["max_tokens"]

    async def main():
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i, p) for i, p in enumerate(plans))), 300)

    results = asyncio.run(main())
    for plan, result in zip(plans, results, strict=True):
        if plan is None:
            assert result is not None and result[0] == "length"
    deadline = time.monotonic() + 60
    while True:  # aborts land in the engine asynchronously
        stats = server.run(server.state.engine.call("stats"))
        if (
            stats.scheduler.kv_cache_usage == 0.0 and server.state.admission.in_flight == 0
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats.scheduler.kv_cache_usage == 0.0
    assert (stats.scheduler.num_running, stats.scheduler.num_waiting) == (0, 0)
    assert server.state.admission.in_flight == 0 and server.state.engine.num_open_requests == 0
    assert metric_value(http.get("/metrics").text, "tokenworks:kv_cache_usage_perc", NAME) == 0.0
