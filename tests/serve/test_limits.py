"""A server with an API key and a tiny queue: 401 without the key, 429 with Retry-After when full."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .conftest import MODEL_NAME, start_server

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def guarded(serve_model_dir):
    # Room for answers long enough to still be running while a test sends its next request, on
    # a host that makes the nano model's tokens in a fraction of a millisecond.
    engine_options = {"max_num_seqs": 1, "max_model_len": 2048}
    running = start_server(serve_model_dir, api_key=KEY, max_queued_requests=1, engine_options=engine_options)
    yield running
    running.stop()


def test_wrong_or_missing_api_key_is_refused(guarded) -> None:
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = http.post("/v1/completions", json={"prompt": "hi"}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401
        assert http.get("/health").status_code == 200  # probes and scrapers need no key
        assert http.get("/metrics").status_code == 200
    with (
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
    with openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=KEY, max_retries=0) as client:
        assert client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_full_queue_is_429_with_retry_after(guarded) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    long = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    clients = [httpx.Client(base_url=guarded.url, timeout=60, headers=headers) for _ in range(3)]
    try:
        with (
            clients[0].stream("POST", "/v1/completions", json=long) as first,
            clients[1].stream("POST", "/v1/completions", json=long) as second,
        ):
            assert first.status_code == second.status_code == 200  # one running, one queued
            refused = clients[2].post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
    finally:
        for client in clients:
            client.close()
    # both streams were closed early: their room is given back once the server sees the disconnects
    with httpx.Client(base_url=guarded.url, timeout=60, headers=headers) as http:
        deadline = time.monotonic() + 30
        while guarded.state.admission.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
