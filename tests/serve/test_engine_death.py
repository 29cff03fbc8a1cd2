"""An engine core that dies never hangs `tokenworks serve`: idle, mid-stream, under load, or starting.

By default the server answers what it holds with 503 (streams end with an error event) and
exits 1, so that its supervisor restarts it; with --restart-engine it answers 503 until a
new core is up, then serves again. Times are asserted in seconds: the point is no hang.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from .conftest import ServeProcess, metric_value

ANSWER_WITHIN_S = 3.0  # from the kill to every stream's error event and the first 503
GREEDY = {"prompt": "The Python language", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def read_stream(url: str, body: dict, events: list, first_token: threading.Event) -> None:
    """Collect a stream's events: ("chunk", ...), ("error", error object, time), ("done", time)."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        events.append(("status", response.status_code))
        for line in response.iter_lines():
            if line == "data: [DONE]":
                events.append(("done", time.monotonic()))
            elif line.startswith("data: "):
                payload = json.loads(line[6:])
                if "error" in payload:
                    events.append(("error", payload["error"], time.monotonic()))
                else:
                    events.append(("chunk", payload))
                    first_token.set()


def post_completion(url: str, results: list) -> None:
    # As long as the streams beside it: a fast host makes 400 tokens before the kill
    response = httpx.post(f"{url}/v1/completions", json={**GREEDY, "max_tokens": 1500}, timeout=60)
    results.append((response.status_code, response.json(), time.monotonic()))


def wait_for_exit(server: ServeProcess, timeout: float = 30.0) -> int:
    return server.process.wait(timeout=timeout)


def test_an_idle_engine_that_dies_stops_the_server_with_status_1(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir)
    try:
        server.wait_healthy()
        killed = kill(server.engine_pid())
        answers = []
        while server.process.poll() is None:
            # Each request answers (503) or finds the server gone: refused, or (accepted just as
            # uvicorn shut down) closed before any response, which clients retry. None may hang:
            # a timeout is not caught.
            try:
                answers.append(httpx.post(f"{server.url}/v1/completions", json=GREEDY, timeout=5).status_code)
            except (httpx.NetworkError, httpx.RemoteProtocolError):
                break
            time.sleep(0.05)
        assert wait_for_exit(server) == 1
        assert time.monotonic() - killed < 15
        assert set(answers) <= {503}
        output = server.output()
        assert "the engine core died" in output and "--restart-engine" in output
        assert "Traceback" not in output
    finally:
        server.stop()


def test_under_load_every_stream_ends_with_an_error_event_and_every_request_gets_503(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir, "--max-model-len", "2048")
    try:
        server.wait_healthy()
        streams = [([], threading.Event()) for _ in range(4)]
        plain: list = []
        threads = [
            threading.Thread(target=read_stream, args=(server.url, {**GREEDY, "max_tokens": 1500}, events, first))
            for events, first in streams
        ]
        threads += [threading.Thread(target=post_completion, args=(server.url, plain)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for _, first in streams:
            assert first.wait(120)
        killed = kill(server.engine_pid())
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a request hung after the engine died"
        for events, _ in streams:
            kinds = [event[0] for event in events]
            assert kinds[0] == "status" and events[0][1] == 200
            assert kinds[-2:] == ["error", "done"], kinds[-3:]
            error = events[-2][1]
            assert error["code"] == "engine_unavailable" and error["type"] == "service_unavailable"
            assert events[-2][2] - killed < ANSWER_WITHIN_S
        assert len(plain) == 2
        for status, body, answered in plain:
            assert status == 503 and body["error"]["code"] == "engine_unavailable"
            assert answered - killed < ANSWER_WITHIN_S
        assert wait_for_exit(server) == 1
    finally:
        server.stop()


def test_an_engine_that_dies_while_starting_stops_the_server_with_a_one_line_reason(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir)
    try:
        killed = kill(server.engine_pid())
        assert wait_for_exit(server) != 0
        assert time.monotonic() - killed < 15
        output = server.output()
        assert "EngineDeadError: the engine process exited during startup (code -9)" in output
        assert "Traceback" not in output
    finally:
        server.stop()


def test_restart_engine_answers_503_until_a_new_core_serves_the_same_tokens(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir, "--restart-engine", "--max-model-len", "2048")
    try:
        server.wait_healthy()
        before = httpx.post(f"{server.url}/v1/completions", json=GREEDY, timeout=60).json()["choices"][0]["text"]
        for restarts in (1, 2):  # twice: the second death meets what the first restart left behind
            events: list = []
            first = threading.Event()
            body = {**GREEDY, "max_tokens": 1500}
            reader = threading.Thread(target=read_stream, args=(server.url, body, events, first))
            reader.start()
            assert first.wait(120)
            old_pid = server.engine_pid()
            killed = kill(old_pid)
            health = []  # 200 until the death is noticed, 503 while restarting, 200 from the new core
            while not (health and health[-1][0] == 200 and any(status == 503 for status, *_ in health)):
                response = httpx.get(f"{server.url}/health", timeout=5)  # never a hang
                health.append((response.status_code, response.json(), time.monotonic()))
                assert time.monotonic() - killed < 120, health[-1]
                time.sleep(0.05)
            reader.join(timeout=60)
            assert [event[0] for event in events][-2:] == ["error", "done"]
            assert events[-2][2] - killed < ANSWER_WITHIN_S
            _, error, answered = next(answer for answer in health if answer[0] == 503)
            assert error["error"]["code"] == "engine_restarting"
            assert answered - killed < ANSWER_WITHIN_S
            after = httpx.post(f"{server.url}/v1/completions", json=GREEDY, timeout=60).json()["choices"][0]["text"]
            assert after == before
            assert server.engine_pid() != old_pid
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert metric_value(metrics, "tokenworks:engine_restarts_total") == restarts
        server.process.send_signal(signal.SIGTERM)
        assert wait_for_exit(server) == 0
    finally:
        server.stop()
