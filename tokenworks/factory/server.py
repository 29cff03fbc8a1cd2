"""The factory's server: `tokenworks serve` on the trained checkpoint, as its own process.

The factory measures the server a user would run, so it starts the real command, waits until
/health answers, and stops it with SIGTERM (the server's graceful drain) when the line is done.
With `--workers N` that command is a fleet: the router on the port, N engine workers behind it
(the router's SIGTERM stops them too). A stopped server can be started again, on the same port:
this process binds the port once, at the first start, and hands the listening socket to each
`tokenworks serve` it starts (`--fd`), so no other process can take the port while the server is
stopped, or while a fleet loads its workers; `close` lets it go.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tokenworks.errors import TokenworksError
from tokenworks.serve.server import listening_socket

STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0  # a fleet's router drains, then stops its workers (each drains: up to 40 s)


class ServerProcess:
    def __init__(self, checkpoint: Path, name: str, log: Path, port: int, args: list[str]) -> None:
        self.checkpoint, self.name, self.log_path = checkpoint, name, log
        self.port = port  # 0: any free port, the one the first start binds
        self.args = args
        self.process: subprocess.Popen | None = None
        self.listener: socket.socket | None = None  # held from the first start until `close`
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get_json(self, path: str, timeout: float = 10.0) -> dict:
        """GET `path` (e.g. /workers) of the running server, as JSON."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return json.loads(response.read())

    def get_text(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return response.read().decode("utf-8")

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> None:
        """Start the command (again, after `stop`, on the same port) and wait until /health answers."""
        if self.listener is None:
            self.listener = listening_socket("127.0.0.1", self.port)
            self.port = self.listener.getsockname()[1]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = self.listener.fileno()
        command = [sys.executable, "-m", "tokenworks", "serve", str(self.checkpoint), "--fd", str(fd)]
        command += ["--served-model-name", self.name, *self.args]
        start = time.perf_counter()
        with self.log_path.open("a" if self.process is not None else "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), pass_fds=(fd,)
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and let its port go."""
        self.stop()
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def stop(self) -> None:
        """Stop the server (SIGTERM: it drains); its port stays held for `start`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TokenworksError(
                    f"the server exited with status {self.process.returncode} while starting; "
                    f"its log ({self.log_path}) ends with:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TokenworksError(
            f"the server did not answer /health within {STARTUP_TIMEOUT_S:.0f} s; see {self.log_path}"
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
