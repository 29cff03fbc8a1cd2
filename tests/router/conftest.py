"""Real workers (`tokenworks serve` processes on the serving tests' nano model) and `tokenworks router` in front."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serve.conftest import ServeProcess, free_port, serve_model_dir  # noqa: F401 (a fixture)


class RouterProcess(ServeProcess):
    """`python -m tokenworks router --worker ...` on a free port (waited for, read and stopped as a server is)."""

    def __init__(self, workers: list[str], *extra: str) -> None:  # its own command, not the server's
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tokenworks", "router", "--port", str(self.port), *extra]
        for worker in workers:
            command += ["--worker", worker]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture()
def workers(serve_model_dir):  # noqa: F811 (the fixture imported above)
    """Two fresh workers (a test may kill them)."""
    started = [ServeProcess(serve_model_dir) for _ in range(2)]
    try:
        yield [worker.wait_healthy() for worker in started]
    finally:
        for worker in started:
            worker.stop()
