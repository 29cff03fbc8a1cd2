"""The serving CPU probe: its arithmetic by hand, the processes it reads, and a probe of a live server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.plan.conftest import write_profile
from tests.serve.conftest import ServeProcess
from tokenworks.plan.latency import FittedLatency
from tokenworks.plan.profiles import Profile
from tokenworks.plan.serving_cpu import (
    ServingProcesses,
    children,
    cpu_seconds,
    probe_figures,
    probe_serving_cpu,
    request_cpu,
    validate_options,
)
from tokenworks.plan.step import StepShape


def run(tokens: float, servers: list[float], engines: list[float], router: float, client: float) -> dict:
    return {"tokens": tokens, "servers_cpu_s": servers, "engines_cpu_s": engines, "router_cpu_s": router,
            "client_cpu_s": client, "records": "unused"}  # fmt: skip


def test_the_figures_are_per_request_and_per_extra_token() -> None:
    short = run(1.0, [0.10, 0.06], [0.20, 0.12], 0.08, 1.5)
    long = run(33.0, [0.9, 0.7], [3.0, 2.0], 0.5, 2.3)
    figures = probe_figures([short, long], 16, routed=True)
    assert figures["way_in_cpu_s"] == pytest.approx(0.16 / 16, rel=1e-12)  # both API servers, the short run's
    assert figures["engine_cpu_s"] == pytest.approx(0.32 / 16, rel=1e-12)
    assert figures["router_cpu_s"] == pytest.approx(0.08 / 16, rel=1e-12)
    # router and client: (0.5 + 2.3) - (0.08 + 1.5) = 1.22 s more for 16 x 32 tokens more
    assert figures["stream_cpu_s"] == pytest.approx(1.22 / (16 * 32), rel=1e-12)
    assert (figures["requests"], figures["runs"]) == (16, [short, long])
    # One worker: its client has a core of its own, and nothing streams through a router.
    assert probe_figures([short, long], 16, routed=False)["stream_cpu_s"] == 0.0
    # A long run cheaper than the short one (noise) is no negative cost.
    assert probe_figures([short, run(33.0, [0.9], [3.0], 0.0, 0.1)], 16, routed=True)["stream_cpu_s"] == 0.0


def test_the_options_for_plan_validate_are_in_milliseconds_and_leave_the_engines_out() -> None:
    figures = {"way_in_cpu_s": 0.0019, "request_cpu_s": 0.0032, "router_cpu_s": 0.0022, "stream_cpu_s": 0.00022}
    assert validate_options(figures) == ["--way-in-cpu-ms", "1.9000", "--router-cpu-ms", "2.2000",
                                         "--stream-cpu-ms", "0.2200"]  # fmt: skip
    assert validate_options({"way_in_cpu_s": 0.0015, "router_cpu_s": None}) == ["--way-in-cpu-ms", "1.5000"]


def test_request_cpu_takes_the_profiled_step_of_each_request_off(nano_model_dir, tmp_path) -> None:
    profile = tmp_path / "profile.json"
    write_profile(nano_model_dir, profile)
    records = tmp_path / "requests.jsonl"
    lines = [{"input_tokens": 40, "cached_tokens": 32}, {"input_tokens": 24, "cached_tokens": None}]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    latency = FittedLatency.from_profile(Profile.load(profile))
    steps = [latency.step_seconds(StepShape(((8, 32),), 1)), latency.step_seconds(StepShape(((24, 0),), 1))]
    probe = {"engine_cpu_s": 0.004, "runs": [{"records": str(records)}]}
    assert request_cpu(probe, profile) == pytest.approx(0.004 - (steps[0] + steps[1]) / 2, rel=1e-12)
    assert request_cpu(probe | {"engine_cpu_s": 0.0}, profile) == 0.0  # never below nothing


# A process tree as `tokenworks serve --workers 2` makes one: the router, two servers, an engine each.
TREE = """
import subprocess, sys, time
leaf = [sys.executable, "-c", "import time; time.sleep(60)"]
server = [sys.executable, "-c", f"import subprocess, time; subprocess.Popen({leaf!r}); time.sleep(60)"]
workers = [subprocess.Popen(server) for _ in range(2)]
time.sleep(60)
"""


def test_the_processes_of_a_fleet_are_the_router_its_servers_and_their_engines() -> None:
    root = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        deadline = time.monotonic() + 30
        while len(grandchildren := [g for child in children(root.pid) for g in children(child)]) < 2:
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.05)
        fleet = ServingProcesses.of_serve(root.pid, 2)
        assert (fleet.router, fleet.servers, fleet.engines) == (root.pid, children(root.pid), grandchildren)
        assert fleet.pids == [*fleet.servers, *grandchildren, root.pid]
        one = ServingProcesses.of_serve(fleet.servers[0], 1)
        assert (one.router, one.servers, one.engines) == (None, [fleet.servers[0]], [grandchildren[0]])
    finally:
        for pid in [g for child in children(root.pid) for g in children(child)] + children(root.pid):
            os.kill(pid, signal.SIGKILL)
        root.kill()
        root.wait()


def test_cpu_seconds_is_the_process_own_and_none_once_gone() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\nwhile "
                             "time.process_time() < end: pass\ntime.sleep(60)"])  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(busy.pid) < 0.3:
            assert time.monotonic() < deadline, "the process did not spin"
            time.sleep(0.05)
        assert cpu_seconds(busy.pid) < 2.0  # its spin and its start, asleep after
    finally:
        busy.kill()
        busy.wait()
    assert cpu_seconds(busy.pid) == 0.0


def test_a_probe_of_a_live_server_reads_its_server_and_its_engine(nano_model_dir, tmp_path) -> None:
    """Three `bench run`s of 3 + 1 requests: the warm-up, one token each (kept), six each."""
    server = ServeProcess(nano_model_dir, "--block-size", "16", "--max-model-len", "256").wait_healthy()
    try:
        processes = ServingProcesses.of_serve(server.process.pid, 1)
        workload = ["--workload", "synthetic", "--input-tokens", "24", "--output-tokens", "6"]
        probe = probe_serving_cpu(server.url, nano_model_dir, workload, processes, tmp_path / "probe",
                                  requests=3, warmup=1)  # fmt: skip
    finally:
        server.stop()
    assert (len(processes.engines), processes.router) == (1, None)
    short, long = probe["runs"]
    assert (short["tokens"], long["tokens"], probe["requests"]) == (1.0, 6.0, 4)
    assert probe["way_in_cpu_s"] == short["servers_cpu_s"][0] / 4 > 0
    assert probe["engine_cpu_s"] == short["engines_cpu_s"][0] / 4 > 0
    assert (probe["router_cpu_s"], probe["stream_cpu_s"]) == (0.0, 0.0)
    assert short["records"] == str(tmp_path / "probe" / "short" / "requests.jsonl")
    assert sorted(path.name for path in (tmp_path / "probe").iterdir()) == [
        "long", "long.log", "short", "short.log", "warm", "warm.log"]  # fmt: skip
    # Every prompt was sent by the warm-up first: the kept one-token requests find it cached.
    records = [json.loads(line) for line in (tmp_path / "probe" / "short" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(record["cached_tokens"] for record in records)
