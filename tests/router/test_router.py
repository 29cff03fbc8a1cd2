"""`tokenworks router` over two real `tokenworks serve` workers: policies, streaming, failover."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.router.conftest import RouterProcess
from tests.serve.conftest import ServeProcess, metric_value
from tokenworks.router.policies import LeastLoad, PowerOfTwo, RoundRobin, RoutedRequest, Session, make_policy
from tokenworks.router.workers import Worker, WorkerPool

GREEDY = {"prompt": "def parse(text):", "max_tokens": 8, "temperature": 0}
OPEN = "tokenworks:num_requests_open"


def pool_of(*loads: int) -> list[Worker]:
    return [Worker(f"http://127.0.0.1:{9000 + i}", f"w{i}", in_flight=load) for i, load in enumerate(loads)]


def request(body: dict | None = None, **headers: str) -> RoutedRequest:
    return RoutedRequest(body or {}, {name.replace("_", "-"): value for name, value in headers.items()})


# ---- policies on crafted states ------------------------------------------------------------


def test_round_robin_and_least_load_choose_exactly():
    workers = pool_of(3, 0, 0)
    rr = RoundRobin()
    assert [rr.choose(request(), workers).id for _ in range(4)] == ["w0", "w1", "w2", "w0"]
    least = LeastLoad()
    assert [least.choose(request(), workers).id for _ in range(3)] == ["w1", "w2", "w1"]  # ties in turn
    assert least.choose(request(), pool_of(2, 5, 1)).id == "w2"


def test_power_of_two_picks_the_less_loaded_of_its_two():
    workers = pool_of(4, 1, 7, 2)
    p2c = PowerOfTwo()
    chosen = [p2c.choose(request(), workers).id for _ in range(200)]
    assert "w2" not in chosen  # the most loaded never wins a pair
    assert {"w0", "w1", "w3"} <= set(chosen)
    assert p2c.choose(request(), workers[:1]).id == "w0"


def test_session_sticks_within_its_ttl_and_falls_back_to_least_load():
    workers = pool_of(0, 0)
    session = Session()
    assert session.choose(request(x_session_id="a"), workers).id == "w0"
    workers[0].in_flight = 9  # busier now, but the session stays
    assert session.choose(request(x_session_id="a"), workers).id == "w0"
    assert session.choose(request({"user": "b"}), workers).id == "w1"  # the body's user is a session too
    assert session.choose(request({"user": "a"}), workers[1:]).id == "w1"  # its worker gone: moved, and remembered
    assert session.choose(request(x_session_id="a"), workers).id == "w1"
    expired = Session(ttl_s=0.0)
    assert expired.choose(request(x_session_id="c"), workers).id == "w1"
    time.sleep(0.01)
    workers[1].in_flight = 20
    assert expired.choose(request(x_session_id="c"), workers).id == "w0"
    with pytest.raises(ValueError, match="unknown routing policy 'kv2'; choose one of round-robin, least-load"):
        make_policy("kv2")


def test_a_failed_worker_sits_out_its_backoff():
    pool = WorkerPool.of(["http://127.0.0.1:9000/v1/", "http://127.0.0.1:9001"])
    assert [w.url for w in pool.workers] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    pool.workers[0].failed("refused")
    assert [w.id for w in pool.candidates()] == ["w1"]
    assert [w.id for w in pool.candidates({"w1"})] == []
    pool.workers[0].skip_until = 0.0
    assert [w.id for w in pool.candidates()] == ["w0", "w1"]
    with pytest.raises(ValueError, match="is a worker already"):
        pool.add("http://127.0.0.1:9001/")
    with pytest.raises(ValueError, match="an http:// or https:// URL"):
        pool.add("127.0.0.1:9002")


# ---- through real workers ------------------------------------------------------------------


def test_requests_spread_stream_and_answer_as_a_worker_does(workers, serve_model_dir):
    router = RouterProcess([w.url for w in workers], "--policy", "round-robin").wait_healthy()
    try:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            answers = [http.post("/v1/completions", json=GREEDY) for _ in range(4)]
            assert [a.status_code for a in answers] == [200] * 4
            assert [a.headers["x-tokenworks-worker"] for a in answers] == ["w0", "w1", "w0", "w1"]
            direct = httpx.post(f"{workers[1].url}/v1/completions", json=GREEDY, timeout=60).json()
            assert {a.json()["choices"][0]["text"] for a in answers} == {direct["choices"][0]["text"]}

            # vLLM's tokenizer routes, by a worker, as the worker answers them; they count in no load
            asked = {"prompt": "The quick brown fox"}
            tokenized = http.post("/tokenize", json=asked)
            assert tokenized.status_code == 200
            assert tokenized.json() == httpx.post(f"{workers[0].url}/tokenize", json=asked, timeout=60).json()
            ids = tokenized.json()["tokens"]
            assert http.post("/detokenize", json={"tokens": ids}).json() == {"prompt": "The quick brown fox"}
            unknown = http.post("/tokenize", json={**asked, "model": "no-such-model"})
            assert (unknown.status_code, unknown.json()) == (
                404, httpx.post(f"{workers[1].url}/tokenize", json={**asked, "model": "no-such-model"}).json(),
            )  # fmt: skip
            assert http.post("/detokenize", content=b"{nope").json()["error"]["message"] == (
                "the request body is not valid JSON"
            )  # fmt: skip

            bad = http.post("/v1/completions", json={**GREEDY, "max_tokens": -1})  # the worker's 400, as it is
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
            assert http.post("/v1/completions", content=b"{nope").status_code == 400

            listed = http.get("/workers").json()
            assert listed["policy"] == "round-robin"
            assert [(w["id"], w["served"], w["in_flight"]) for w in listed["workers"]] == [("w0", 3, 0), ("w1", 2, 0)]
            assert http.get("/health").json() == {"status": "ok", "workers": 2, "of": 2}

            scraped = http.get("/metrics").text
            w0, w1 = workers[0].url, workers[1].url
            counts = {
                (url, status): metric_value(scraped, "tokenworks_router_requests_total", {"worker": url, "status": status})
                for url in (w0, w1) for status in ("200", "400")
            }  # fmt: skip
            assert counts == {(w0, "200"): 2, (w0, "400"): 1, (w1, "200"): 2, (w1, "400"): 0}
            decided = [metric_value(scraped, "tokenworks_router_decisions_total", {"worker": url}) for url in (w0, w1)]
            assert decided == [3, 2]
            assert metric_value(scraped, "tokenworks_router_worker_up", {"worker": w1}) == 1
            assert metric_value(scraped, "tokenworks_router_failovers_total") == 0

        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused")
        model = serve_model_dir.name  # each worker serves it under its directory's name: listed once
        assert [card.id for card in client.models.list().data] == [model]
        streamed = client.completions.create(model=model, stream=True, **GREEDY)
        text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
        assert text == direct["choices"][0]["text"]
    finally:
        router.stop()


def test_a_dead_worker_is_routed_around_and_no_request_is_lost(workers):
    """kill -9 of one worker: every later request is answered by the other (the first ones after
    the kill fail over before anything was sent back); with both dead, a 503 at once."""
    router = RouterProcess([w.url for w in workers], "--policy", "round-robin").wait_healthy()
    try:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            os.kill(workers[0].process.pid, signal.SIGKILL)
            workers[0].process.wait()
            # w0 is asked first (both idle) unless its health check saw it die: w1 answers either way
            tokenized = http.post("/tokenize", json={"prompt": "a b c"})
            assert (tokenized.status_code, tokenized.headers["x-tokenworks-worker"]) == (200, "w1")
            answers = [http.post("/v1/completions", json=GREEDY) for _ in range(6)]
            assert [a.status_code for a in answers] == [200] * 6
            assert {a.headers["x-tokenworks-worker"] for a in answers} == {"w1"}
            states = {w["id"]: w for w in http.get("/workers").json()["workers"]}
            assert states["w0"]["failures"] >= 1 and not states["w0"]["healthy"] and states["w1"]["healthy"]

            os.kill(workers[1].process.pid, signal.SIGKILL)
            workers[1].process.wait()
            started = time.monotonic()
            answer = http.post("/v1/completions", json=GREEDY)
            assert answer.status_code == 503 and time.monotonic() - started < 1.0
            error = answer.json()["error"]
            assert error["code"] == "no_worker" and error["message"].startswith("no worker could take the request")
            assert http.get("/health").status_code == 503
            scraped = http.get("/metrics").text
            assert metric_value(scraped, "tokenworks_router_no_worker_total") == 1
            served = metric_value(scraped, "tokenworks_router_requests_total", {"worker": workers[1].url})
            assert served == 6
    finally:
        router.stop()


def test_a_stream_broken_by_its_worker_ends_with_an_error_event(workers):
    router = RouterProcess([workers[0].url]).wait_healthy()
    body = {"prompt": "x", "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True}
    try:
        events = []
        with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[len("data: ") :])
                if len(events) == 2:  # streaming: now its worker dies
                    os.kill(workers[0].process.pid, signal.SIGKILL)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "worker_failed" and "the answer is incomplete" in error["message"]
        assert all("choices" in json.loads(event) for event in events[:-2])
    finally:
        router.stop()


def test_workers_join_and_leave_at_run_time(workers):
    router = RouterProcess([workers[0].url], "--api-key", "k").wait_healthy()
    auth = {"Authorization": "Bearer k"}
    try:
        with httpx.Client(base_url=router.url, timeout=60, headers=auth) as http:
            assert httpx.get(f"{router.url}/workers").status_code == 401  # the pool is behind the key
            assert httpx.post(f"{router.url}/tokenize", json={"prompt": "x"}).status_code == 401
            assert http.post("/tokenize", json={"prompt": "x"}).status_code == 200
            added = http.post("/workers", json={"url": f"{workers[1].url}/v1"})
            assert (added.status_code, added.json()["id"], added.json()["url"]) == (201, "w1", workers[1].url)
            assert http.post("/workers", json={"url": workers[1].url}).status_code == 400
            assert http.post("/workers", json={"address": "x"}).json()["error"]["param"] == "url"
            assert http.delete("/workers/w0").json()["id"] == "w0"
            assert http.delete("/workers/w0").status_code == 404
            answer = http.post("/v1/completions", json=GREEDY)
            assert (answer.status_code, answer.headers["x-tokenworks-worker"]) == (200, "w1")
    finally:
        router.stop()


def test_the_generation_routes_answer_bad_requests_with_openai_errors(workers):
    """They skip FastAPI's routing (app.GenerationFastPath); the key, the size limit and the
    error objects still hold."""
    router = RouterProcess([workers[0].url], "--api-key", "k").wait_healthy()
    auth = {"Authorization": "Bearer k"}
    try:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            refused = http.post("/v1/completions", json=GREEDY)
            assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
            not_json = http.post("/v1/chat/completions", content=b"{not json", headers=auth)
            assert (not_json.status_code, not_json.json()["error"]["message"]) == (
                400, "the request body is not valid JSON",
            )  # fmt: skip
            listed = http.post("/v1/completions", json=[GREEDY], headers=auth)
            assert listed.json()["error"]["message"] == "the request body must be a JSON object"
            huge = http.post("/v1/completions", content=b"x" * (16 * 2**20 + 1), headers=auth)
            assert (huge.status_code, huge.json()["error"]["code"]) == (413, "request_too_large")
            answer = http.post("/v1/completions", json=GREEDY, headers=auth)
            assert (answer.status_code, answer.json()["usage"]["completion_tokens"]) == (200, 8)
            assert http.get("/v1/completions", headers=auth).status_code == 405  # FastAPI's own answer
    finally:
        router.stop()


def test_the_router_imports_no_torch():
    code = (
        "import sys\n"
        "from tokenworks.router import RouterConfig, create_router_app\n"
        "create_router_app(RouterConfig(workers=['http://127.0.0.1:9']))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_client_that_leaves_frees_the_work_on_its_worker(workers):
    """A client that closes its stream after two events, or gives up waiting for a whole answer:
    the router drops its request to the worker, which aborts it (its open requests fall to 0 long
    before 1,500 tokens were made), and the router's own count of it is gone too."""
    router = RouterProcess([workers[0].url]).wait_healthy()
    body = {"prompt": "x", "max_tokens": 1500, "temperature": 0, "ignore_eos": True}
    metrics_url = f"{workers[0].url}/metrics"

    def worker_idle() -> bool:
        deadline = time.monotonic() + 2.0
        while metric_value(httpx.get(metrics_url).text, OPEN) and time.monotonic() < deadline:
            time.sleep(0.02)
        return metric_value(httpx.get(metrics_url).text, OPEN) == 0

    async def leave_once_the_worker_generates() -> None:
        # Leave when the worker is seen generating, not after a fixed wait: a fast host makes the
        # whole answer in 0.3 s (CI did), and a client that leaves after it has left nothing to free.
        async with httpx.AsyncClient(timeout=60) as client:
            answer = asyncio.create_task(client.post(f"{router.url}/v1/completions", json=body))
            while not metric_value((await client.get(metrics_url)).text, OPEN):
                assert not answer.done(), "the whole answer came before the worker was seen generating it"
                await asyncio.sleep(0.005)
            answer.cancel()  # the client gives up: its connection to the router closes
            with contextlib.suppress(asyncio.CancelledError):
                await answer

    try:
        with httpx.stream("POST", f"{router.url}/v1/completions", json={**body, "stream": True}, timeout=60) as stream:
            for index, _ in enumerate(stream.iter_lines()):
                if index == 3:
                    break
        assert worker_idle()
        asyncio.run(leave_once_the_worker_generates())
        assert worker_idle()
        assert 0 < metric_value(httpx.get(metrics_url).text, "tokenworks:generation_tokens_total") < 1500
        assert [w["in_flight"] for w in httpx.get(f"{router.url}/workers").json()["workers"]] == [0]
    finally:
        router.stop()


def test_feedback_through_the_router_reaches_the_worker_that_logged_the_answer(serve_model_dir, tmp_path):
    logged = [ServeProcess(serve_model_dir, "--log-db", str(tmp_path / f"w{k}.db")) for k in range(2)]
    router = None
    try:
        router = RouterProcess([w.wait_healthy().url for w in logged], "--policy", "round-robin").wait_healthy()
        with httpx.Client(base_url=router.url, timeout=60) as http:
            answers = [http.post("/v1/completions", json=GREEDY) for _ in range(2)]
            assert [a.headers["x-tokenworks-worker"] for a in answers] == ["w0", "w1"]
            for answer in answers:  # each in its own worker's log only
                request_id = answer.json()["id"]
                stored = http.post("/v1/feedback", json={"request_id": request_id, "rating": -1, "correction": "x"})
                assert stored.status_code == 200, stored.text
                assert (stored.json()["request_id"], stored.json()["rating"]) == (request_id, -1.0)
            unknown = http.post("/v1/feedback", json={"request_id": "cmpl-nope", "rating": 1})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
            malformed = http.post("/v1/feedback", json={"request_id": "cmpl-nope", "stars": 5})
            assert malformed.status_code == 400
    finally:
        if router is not None:
            router.stop()
        for worker in logged:
            worker.stop()
