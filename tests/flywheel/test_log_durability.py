"""`kill -9` of a logging server under load: every request answered more than one flush interval
before the kill is in the log, by id; a clean shutdown (SIGTERM) loses none; and a log it cannot
write stops the server before it starts."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from ..serve.conftest import ServeProcess, serve_model_dir  # noqa: F401 (a fixture)

FLUSH_INTERVAL_S = 0.5
# A commit runs in the writer's thread, which on a busy 2-core machine may wait its turn for
# the CPU and the GIL: the guarantee is the interval plus the commit, this its allowance.
COMMIT_ALLOWANCE_S = 0.5
CLIENTS = 8


def load(url: str, stop: threading.Event, answered: list[tuple[str, float]]) -> None:
    """Completions one after another until `stop`: (id, time answered) of each."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            try:
                response = client.post("/v1/completions", json={"prompt": "A list is", "max_tokens": 4})
            except httpx.TransportError:
                return  # the server is gone
            if response.status_code == 200:
                answered.append((response.json()["id"], time.monotonic()))


def logged_ids(db) -> set[str]:
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {row[0] for row in connection.execute("SELECT request_id FROM requests")}


def run_load(server: ServeProcess, seconds: float) -> tuple[list[tuple[str, float]], threading.Event, list]:
    stop, answered = threading.Event(), []
    threads = [threading.Thread(target=load, args=(server.url, stop, answered)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    return answered, stop, threads


def test_kill_9_under_load_loses_at_most_the_last_flush_interval(serve_model_dir, tmp_path) -> None:  # noqa: F811
    db = tmp_path / "requests.db"
    server = ServeProcess(serve_model_dir, "--log-db", str(db), "--log-flush-interval", str(FLUSH_INTERVAL_S))
    engine = None
    try:
        server.wait_healthy()
        engine = server.engine_pid()
        answered, stop, threads = run_load(server, 3.0)
        server.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        server.process.wait()
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        server.stop()
    due = {request_id for request_id, at in answered if at < killed - FLUSH_INTERVAL_S - COMMIT_ALLOWANCE_S}
    logged = logged_ids(db)
    assert len(due) >= 20, f"too little load to judge: {len(answered)} answered"
    assert due <= logged, f"{len(due - logged)} of {len(due)} requests answered before the last flush are missing"
    assert logged <= {request_id for request_id, _ in answered}  # nothing logged that was not answered
    _wait_gone(engine)


def test_sigterm_commits_every_answered_request(serve_model_dir, tmp_path) -> None:  # noqa: F811
    db = tmp_path / "requests.db"
    server = ServeProcess(serve_model_dir, "--log-db", str(db), "--log-flush-interval", "60")
    try:
        server.wait_healthy()
        answered, stop, threads = run_load(server, 1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    assert logged_ids(db) == {request_id for request_id, _ in answered}


def _wait_gone(pid: int | None) -> None:
    """The orphaned engine core exits by itself (its parent is gone): wait, so it does not load the next test."""
    from ..serve.conftest import alive

    deadline = time.monotonic() + 15
    while pid is not None and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_log_it_cannot_write_stops_the_server_before_it_starts(serve_model_dir, tmp_path) -> None:  # noqa: F811
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "serve", str(serve_model_dir), "--log-db", str(not_a_directory / "log.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot write the request log at {not_a_directory / 'log.db'}" in result.stderr
    assert "Traceback" not in result.stderr
