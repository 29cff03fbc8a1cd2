"""SIGTERM to `tokenworks serve`: the stream in flight finishes, new requests are refused, all processes exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

MAX_TOKENS = 1500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_sigterm_drains_then_exits(serve_model_dir) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "tokenworks", "serve", str(serve_model_dir), "--port", str(port), "--threads", "1",
        "--max-model-len", "2048", "--kv-cache-memory-gib", "0.05", "--shutdown-timeout", "120",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
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
        if process.poll() is None:
            process.kill()
            process.wait()
