"""A nano checkpoint and real uvicorn servers on 127.0.0.1 (free ports), each with its own engine process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tokenworks.data import python_docs
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model
from tokenworks.serve import ServerConfig, create_app

MODEL_NAME = "nano-test"
MAX_MODEL_LEN = 256
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory):
    texts = [d.text for d in itertools.islice(python_docs(include_modules=False), 40)]
    tokenizer = Tokenizer.train(texts, vocab_size=512)
    directory = tmp_path_factory.mktemp("serve-nano")
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), directory)
    tokenizer.save(directory)
    return directory


class ServerThread:
    """uvicorn serving `create_app(config)` in a background thread, on a port the OS picks."""

    def __init__(self, config: ServerConfig) -> None:
        import uvicorn

        from tokenworks.serve.server import Server

        self.app = create_app(config)
        self.server = Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=10)
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-test-server", daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())
        self.loop.close()

    def start(self, timeout: float = 300.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    @property
    def state(self):
        return self.app.state.server

    def run(self, coroutine, timeout: float = 60.0):
        """Run a coroutine on the server's own event loop (where its engine lives)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(model_dir, **overrides) -> ServerThread:
    engine_options = dict(threads=1, max_model_len=MAX_MODEL_LEN, kv_cache_memory_gib=0.05)
    engine_options.update(overrides.pop("engine_options", {}))
    config = ServerConfig(
        model=model_dir, served_model_name=MODEL_NAME, max_body_bytes=MAX_BODY_BYTES, engine_options=engine_options,
        **overrides,
    )  # fmt: skip
    return ServerThread(config).start()


@pytest.fixture(scope="session")
def server(serve_model_dir):
    """The main server: no API key, default limits except a small body limit and context."""
    running = start_server(serve_model_dir)
    yield running
    running.stop()


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text exposition (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, label_text = key.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


# ---- `tokenworks serve` as its own process, the way a user (or a supervisor) runs it ----------


_PORTS = random.Random()  # seeded by the OS: test sessions running side by side draw different ports


def free_port() -> int:
    """A port to give a server's --port: free now, and below the kernel's ephemeral range, which
    it draws from for every port-0 bind and outgoing connection (the suite's own clients, ZMQ's
    `tcp://127.0.0.1:*`), so that nothing else takes it before the server binds it seconds later."""
    lowest_ephemeral = 32768
    with contextlib.suppress(OSError, ValueError):
        lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = _PORTS.randrange(max(1024, lowest_ephemeral - 12_000), lowest_ephemeral)
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port below the ephemeral range")


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


class ServeProcess:
    """`python -m tokenworks serve MODEL` on a free port, its output kept for the assertions."""

    def __init__(self, model_dir, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()  # a given port: to come back on it after a kill
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "tokenworks", "serve", str(model_dir), "--port", str(self.port), "--threads", "1",
            "--kv-cache-memory-gib", "0.05", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_healthy(self, timeout: float = 240.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def engine_pid(self, timeout: float = 60.0) -> int:
        """The engine core: the server's one child process (once it has started it)."""
        deadline = time.monotonic() + timeout
        while not (children := children_of(self.process.pid)):
            assert time.monotonic() < deadline and self.process.poll() is None, "no engine process appeared"
            time.sleep(0.01)
        (pid,) = children
        return pid

    def output(self) -> str:
        """Everything the server printed (call once it has exited)."""
        return self.process.stdout.read() if self.process.poll() is not None else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
