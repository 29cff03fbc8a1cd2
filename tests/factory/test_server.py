"""The factory's server process: stopped and started again on the port it holds in between."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.serve.conftest import serve_model_dir  # noqa: F401 (a fixture)
from tokenworks.factory.server import ServerProcess

ARGS = ["--threads", "1", "--max-model-len", "256", "--kv-cache-memory-gib", "0.05"]


def test_a_stopped_server_keeps_its_port_and_comes_back_on_it(serve_model_dir, tmp_path) -> None:  # noqa: F811
    with ServerProcess(serve_model_dir, "nano", tmp_path / "server.log", 0, ARGS) as server:
        port, first = server.port, server.process.pid
        server.stop()
        assert not server.running
        # Another process binding the port while the server is stopped (a test's server, a user's
        # service) would stop the restart: the port is held, so it cannot.
        with server_socket() as intruder, pytest.raises(OSError) as taken:
            intruder.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        server.start()
        assert server.port == port and server.process.pid != first
        assert [card["id"] for card in server.get_json("/v1/models")["data"]] == ["nano"]
        log = server.log_path.read_text()
        assert log.count(f"Uvicorn running on http://127.0.0.1:{port}") == 2, log
    assert not server.running
    with server_socket() as successor:  # closed: the port is free again
        successor.bind(("127.0.0.1", port))


def server_socket() -> socket.socket:
    """A socket as a server binds it: SO_REUSEADDR, so the connections left in TIME_WAIT do not count."""
    bound = socket.socket()
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return bound
