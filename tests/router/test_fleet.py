"""`tokenworks serve MODEL --workers 2`: two engine processes behind the router on one port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve.conftest import ServeProcess, alive, children_of
from tokenworks.router.fleet import STARTING_STOP_TIMEOUT_S, Fleet
from tokenworks.serve.server import PARENT_PID_VARIABLE

GREEDY = {"prompt": "def parse(text):", "max_tokens": 8, "temperature": 0}


def test_serve_with_workers_splits_the_threads_routes_and_stops_them_all(serve_model_dir):
    fleet = ServeProcess(serve_model_dir, "--workers", "2", "--seed", "3").wait_healthy()
    try:
        workers = children_of(fleet.process.pid)
        assert len(workers) == 2  # two `tokenworks serve` processes, each with its own engine
        with httpx.Client(base_url=fleet.url, timeout=60) as http:
            listed = http.get("/workers").json()
            assert listed["policy"] == "kv" and [w["id"] for w in listed["workers"]] == ["w0", "w1"]
            answers = [http.post("/v1/completions", json=GREEDY) for _ in range(4)]
            assert [a.headers["x-tokenworks-worker"] for a in answers] == ["w0", "w1", "w0", "w1"]
            assert len({a.json()["choices"][0]["text"] for a in answers}) == 1
        fleet.process.send_signal(signal.SIGTERM)
        assert fleet.process.wait(60) == 0
        assert not any(alive(pid) for pid in workers)
        output = fleet.output()
        assert "2 workers x 1 thread each" in output, output
    finally:
        fleet.stop()


def test_a_fleet_passes_the_serve_options_given_on_to_every_worker():
    from typer.main import get_command

    from tokenworks.cli import app
    from tokenworks.serve.cli import worker_options

    command = get_command(app).commands["serve"]
    argv = ["m", "--workers", "2", "--threads", "4", "--seed", "3", "--no-enable-prefix-caching", "--api-key", "k",
            "--lora-modules", "a=/x", "--lora-modules", "b=/y", "--port", "9"]  # fmt: skip
    context = command.make_context("serve", argv)
    assert worker_options(context) == [  # in the command's own order; the fleet's options left out
        "--no-enable-prefix-caching", "--seed", "3", "--lora-modules", "a=/x", "--lora-modules", "b=/y",
    ]  # fmt: skip
    assert Fleet("m", 2, 4).threads_each == 2 and Fleet("m", 3, 2).threads_each == 1


def test_workers_stop_by_themselves_when_their_fleet_is_killed(serve_model_dir):
    fleet = ServeProcess(serve_model_dir, "--workers", "2").wait_healthy()
    try:
        workers = children_of(fleet.process.pid)
        engines = [pid for worker in workers for pid in children_of(worker)]
        assert len(workers) == 2 and len(engines) == 2
        fleet.process.send_signal(signal.SIGKILL)
        fleet.process.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers + engines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers + engines)
    finally:
        fleet.stop()


def started_by(fleet_pid: int) -> list[int]:
    """Every process a fleet started, at any depth (its workers and their engine cores): those
    whose environment names the fleet as their parent, reparented or not."""
    mark = f"{PARENT_PID_VARIABLE}={fleet_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and mark in (entry / "environ").read_bytes().split(b"\0")
                and alive(int(entry.name))
            ):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_sigterm_while_the_workers_start_stops_them_all(serve_model_dir):
    fleet = ServeProcess(serve_model_dir, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while len(started := started_by(fleet.process.pid)) < 2:  # both workers exist (exec'd: their environ says so)
            assert fleet.process.poll() is None and time.monotonic() < deadline, fleet.output()
            time.sleep(0.01)
        fleet.process.send_signal(signal.SIGTERM)
        assert fleet.process.wait(STARTING_STOP_TIMEOUT_S + 10) == 130  # as after Ctrl-C
        output = fleet.output()
        assert "Traceback" not in output, output
        assert "workers x" not in output  # stopped while they started: the fleet never described itself
        deadline = time.monotonic() + 60  # an engine core still loading stops once it finds its worker gone
        while started_by(fleet.process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in started)
    finally:
        fleet.stop()


def test_a_fleet_whose_port_is_taken_fails_before_starting_a_worker(serve_model_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = [sys.executable, "-m", "tokenworks", "serve", str(serve_model_dir), "--workers", "2", "--port", str(port)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr, result.stderr
    assert "workers x" not in result.stderr and "Started server process" not in result.stderr
