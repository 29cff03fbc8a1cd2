"""SIGTERM to `tokenworks serve`: the stream in flight finishes, new requests are refused, all processes exit."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from .conftest import ServeProcess, alive, children_of

MAX_TOKENS = 1500


def test_sigterm_drains_then_exits(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir, "--max-model-len", "2048", "--shutdown-timeout", "120")
    process, url = server.process, server.url
    try:
        server.wait_healthy()
        engine_pids = children_of(process.pid)
        assert engine_pids
        started, result = threading.Event(), {}

        def stream() -> None:
            body = {"prompt": "hi", "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
                for line in response.iter_lines():
                    started.set()
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        result["finish"] = choice["finish_reason"] or result.get("finish")
                    elif line == "data: [DONE]":
                        result["done"] = True

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(120)
        process.send_signal(signal.SIGTERM)
        refused = None
        while reader.is_alive() and refused is None:
            try:
                response = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=5)
                refused = response.status_code == 503 or None
            except httpx.TransportError:
                refused = True  # the listening socket is closed
            time.sleep(0.05)
        reader.join(timeout=300)
        assert result == {"finish": "length", "done": True}
        assert process.wait(timeout=120) == 0
        assert refused is not None or not reader.is_alive()
        for pid in engine_pids:
            deadline = time.monotonic() + 30
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive(pid), f"engine process {pid} outlived the server"
    finally:
        server.stop()
