"""The kv policy end to end: real `tokenworks serve` workers publishing KV events, the router in
front; prefixes land where their blocks are, a restarted worker's blocks leave the index at
once, and a worker killed in the middle of a `tokenworks bench` run loses no request that had
not started streaming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.router.conftest import RouterProcess
from tests.serve.conftest import ServeProcess, free_port, metric_value
from tokenworks.model import Tokenizer
from tokenworks.router.fleet import KV_EVENTS_CONFIG
from tokenworks.router.workers import MAX_BACKOFF_S

BLOCK = 16
PREFIXES = {
    "a": "You answer questions about the Python standard library, briefly and exactly. " * 4,
    "b": "Translate each sentence into plain English, keeping every name as it is written. " * 4,
}


class KVWorker(ServeProcess):
    """A worker publishing its KV events, on a port of its own or the one given (to come back on it)."""

    def __init__(self, model_dir, port: int | None = None) -> None:  # its own command, not the parent's
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "tokenworks", "serve", str(model_dir), "--port", str(self.port), "--threads", "1",
            "--kv-cache-memory-gib", "0.05", "--block-size", str(BLOCK), "--kv-events-config", KV_EVENTS_CONFIG,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture()
def kv_workers(serve_model_dir):
    """Two workers; a test that replaces one in the list leaves it to be stopped here too."""
    started = [KVWorker(serve_model_dir) for _ in range(2)]
    try:
        for worker in started:
            worker.wait_healthy()
        yield started
    finally:
        for worker in started:
            worker.stop()


def ask(http: httpx.Client, prefix: str, question: int) -> tuple[str, dict]:
    body = {
        "prompt": PREFIXES[prefix] + f"Question {question}: what is it?", "max_tokens": 4, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        chunks = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: {")]
        return response.headers["x-tokenworks-worker"], json.loads(chunks[-1])["usage"]


def dashboard(http: httpx.Client) -> dict[str, dict]:
    return {row["id"]: row for row in http.get("/dashboard/data").json()["workers"]}


def back_with_its_events(http: httpx.Client, worker_id: str) -> bool:
    row = dashboard(http)[worker_id]
    return bool(row["healthy"] and row["kv_events"])


def assert_predicted_as_reported(scraped: str, workers: list[KVWorker]) -> None:
    """The index knew exactly what each worker would find of each prompt."""
    for worker in workers:
        labels = {"worker": worker.url}
        predicted = metric_value(scraped, "tokenworks_router_predicted_cached_tokens_total", labels)
        assert predicted == metric_value(scraped, "tokenworks_router_reported_cached_tokens_total", labels)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def indexed(http: httpx.Client, worker: KVWorker) -> float:
    """The blocks the router holds in its index for the worker (its events confirmed)."""
    return metric_value(http.get("/metrics").text, "tokenworks_router_index_blocks", {"worker": worker.url})


def test_prefixes_land_where_their_blocks_are_and_a_restart_empties_the_index(kv_workers, serve_model_dir):
    router = RouterProcess([w.url for w in kv_workers]).wait_healthy()  # kv, the default; tokenizer found itself
    try:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            wait_until(lambda: all(row["kv_events"] for row in dashboard(http).values()))
            wait_until(lambda: http.get("/dashboard/data").json()["tokenizer"] == str(serve_model_dir))
            # the workers tokenize with the router's tokenizer: they are handed its token ids
            fingerprint = Tokenizer.load(serve_model_dir).fingerprint
            assert [row["tokenizer"] for row in dashboard(http).values()] == [fingerprint, fingerprint]
            page = http.get("/dashboard")
            assert page.headers["content-type"].startswith("text/html") and "tokenworks router" in page.text
            placed = {prefix: [ask(http, prefix, q) for q in range(3)] for prefix in ("a", "b", "a", "b")}
            home = {prefix: {worker for worker, _ in answers} for prefix, answers in placed.items()}
            assert len(home["a"]) == 1 and len(home["b"]) == 1 and home["a"] != home["b"]
            for answers in placed.values():  # after the first of each prefix, its whole blocks were found
                for _, usage in answers[1:]:
                    prompt = usage["prompt_tokens"]
                    assert usage["prompt_tokens_details"]["cached_tokens"] >= (prompt - 8) // BLOCK * BLOCK
            # each worker's events reach the index (they may trail the answers on a busy host)
            wait_until(lambda: all(indexed(http, worker) > 0 for worker in kv_workers))
            scraped = http.get("/metrics").text
            assert_predicted_as_reported(scraped, kv_workers)
            # 12 requests: the first of each prefix found nothing, the 10 others their prefix
            assert metric_value(scraped, "tokenworks_router_decisions_total", {"reason": "prefix-hit"}) == 10

            # the worker holding "a" restarts: its blocks leave the index as soon as it is seen down
            (holder,) = home["a"]
            index = int(holder[1:])
            port = kv_workers[index].port
            os.kill(kv_workers[index].process.pid, signal.SIGKILL)
            kv_workers[index].process.wait()
            wait_until(lambda: not dashboard(http)[holder]["healthy"])
            row = dashboard(http)[holder]
            assert (row["index_blocks"], row["epoch"]) == (0, 1)
            kv_workers[index] = KVWorker(serve_model_dir, port).wait_healthy()
            # The router checks a worker that kept failing only once its breaker's backoff has passed:
            # after a slow restart, up to MAX_BACKOFF_S after the worker answers again.
            wait_until(lambda: back_with_its_events(http, holder), timeout=MAX_BACKOFF_S + 30)
            ask(http, "a", 9)  # never sent anywhere for blocks the restarted worker no longer has
            assert_predicted_as_reported(http.get("/metrics").text, kv_workers)
    finally:
        router.stop()


def test_a_worker_killed_during_a_bench_run_loses_no_request_that_had_not_started(
    kv_workers, serve_model_dir, tmp_path
):
    router = RouterProcess([w.url for w in kv_workers]).wait_healthy()
    out = tmp_path / "bench"
    command = [
        sys.executable, "-m", "tokenworks", "bench", "run", "--url", router.url, "--tokenizer", str(serve_model_dir),
        "--workload", "shared-prefix", "--num-prefixes", "4", "--questions-per-prefix", "12", "--prefix-tokens", "64",
        "--output-tokens", "48", "--concurrency", "6", "--num-requests", "48", "--warmup-requests", "0",
        "--out", str(out),
    ]  # fmt: skip
    try:
        bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim = kv_workers[0]

        def kill_when_busy() -> None:  # once the run is well under way
            with httpx.Client(base_url=router.url, timeout=10) as http:
                wait_until(lambda: sum(w["served"] for w in http.get("/workers").json()["workers"]) >= 8, 120)
            os.kill(victim.process.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        output, _ = bench.communicate(timeout=300)
        killer.join()
        assert bench.returncode == 0, output
        records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
        failed = [record for record in records if record["status"] != "ok"]
        assert len(records) == 48
        # a failure is only a stream the dying worker had started: it ended with the router's error event
        assert all("worker" in (record["error"] or "") for record in failed), failed
        assert len(failed) <= 6  # at most the requests in flight when it died
        with httpx.Client(base_url=router.url, timeout=10) as http:
            scraped = http.get("/metrics").text
        broken = metric_value(scraped, "tokenworks_router_broken_streams_total", {"worker": victim.url}) or 0
        assert len(failed) == broken
    finally:
        router.stop()


def test_workers_join_and_leave_under_load_without_a_failed_request(kv_workers):
    router = RouterProcess([kv_workers[0].url]).wait_healthy()
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            question = 0
            while not stop.is_set():
                prompt = f"{threading.get_ident()} asks question {question}"  # no prefix to hold on to: by load
                body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
                statuses.append(http.post("/v1/completions", json=body).status_code)
                question += 1

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        with httpx.Client(base_url=router.url, timeout=60) as http:
            wait_until(lambda: len(statuses) >= 6)
            assert http.post("/workers", json={"url": kv_workers[1].url}).json()["id"] == "w1"
            wait_until(lambda: dashboard(http)["w1"]["served"] >= 2)  # the newcomer takes its share
            assert http.delete("/workers/w0").status_code == 200
            served = len(statuses)
            wait_until(lambda: len(statuses) >= served + 6)
            assert list(dashboard(http)) == ["w1"]
            scraped = http.get("/metrics").text
            assert metric_value(scraped, "tokenworks_router_index_blocks", {"worker": kv_workers[0].url}) == 0
    finally:
        stop.set()
        for client in clients:
            client.join()
        router.stop()
    assert set(statuses) == {200}
