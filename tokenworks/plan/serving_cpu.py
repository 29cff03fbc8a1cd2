"""What serving costs the cores outside `EngineCore.step()`, measured apart by process CPU time.

After a deployment's sweep, `probe_serving_cpu` sends requests at concurrency 1 with `tokenworks
bench run` (a prompt seed no sweep sends) and reads each process's CPU time from /proc
(schedstat, in ns: a request's few milliseconds are below utime's 10 ms ticks): the API
servers', their engine cores', the router's and the load generator's. Per request, the API
servers' and the router's (the way in, which the simulation queues on the worker's core ahead of
its steps); per streamed token, the router's and the load generator's, which have no core of
their own beside two workers (the simulation shares it out among the busy workers' cores).
`validate_options` turns the figures into `plan validate`'s options. benchmarks/plan_accuracy.py
and the factory's plan stage both run it; figures measured, never fitted.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.errors import PlanError

PROBE_REQUESTS, PROBE_WARMUP = 64, 2
PROBE_SEED = 7  # prompts none of the sweeps sends (theirs: seeds 0, 1 and 2)
CPU_FIGURES = ("way_in_cpu_s", "request_cpu_s", "router_cpu_s", "stream_cpu_s")
# What `plan validate` simulates. The engine's own CPU a request (request_cpu_s) is measured and
# reported but not simulated: on top of the API server's it made closed-loop TTFT 30-60% too long
# at c=4..32 on tiny (a request's fixed costs at c=1, wake-ups among them, are shared by the
# requests of a batch live).
VALIDATE_OPTIONS = (("way_in_cpu_s", "--way-in-cpu-ms"), ("router_cpu_s", "--router-cpu-ms"),
                    ("stream_cpu_s", "--stream-cpu-ms"))  # fmt: skip


@dataclass(slots=True)
class ServingProcesses:
    """The processes of one deployment whose CPU the probe reads."""

    servers: list[int]  # the API servers (`tokenworks serve`, one per worker)
    engines: list[int]  # their engine core processes
    router: int | None = None

    @classmethod
    def of_servers(cls, servers: list[int], router: int | None = None) -> ServingProcesses:
        return cls(servers, [child for pid in servers for child in children(pid)], router)

    @classmethod
    def of_serve(cls, pid: int, workers: int) -> ServingProcesses:
        """`tokenworks serve` as process `pid`: one server, or with --workers N > 1 the router, whose
        children are the N workers' servers (router/fleet.py)."""
        return cls.of_servers(children(pid), pid) if workers > 1 else cls.of_servers([pid])

    @property
    def pids(self) -> list[int]:
        return [*self.servers, *self.engines, *([self.router] if self.router is not None else [])]


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread of one process, not its children; 0 for a process gone."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, whichever of its threads started them."""
    found: list[int] = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def probe_serving_cpu(
    url: str, model: Path, bench_args: list[str], processes: ServingProcesses, out: Path,
    client_cores: list[int] | None = None, requests: int = PROBE_REQUESTS, warmup: int = PROBE_WARMUP,
) -> dict[str, Any]:  # fmt: skip
    """`bench run` at concurrency 1 three times, with `bench_args` (the workload, its --output-tokens
    among them): answers of one token (their prompts cached for the rest: the step each kept
    request makes is then short, and the profile's error on it, taken off the engine's CPU by
    `request_cpu`, small), the same again, kept, then answers of the workload's length. Run
    directories and logs under `out`; the figures as `probe_figures` makes them, with the runs."""
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, tokens in (("warm", "1"), ("short", "1"), ("long", None)):
        asked = list(bench_args)
        if tokens is not None:
            asked[asked.index("--output-tokens") + 1] = tokens
        where = out / name
        shutil.rmtree(where, ignore_errors=True)
        command = [sys.executable, "-m", "tokenworks", "bench", "run", "--url", url, "--tokenizer", str(model), *asked,
                   "--concurrency", "1", "--num-requests", str(requests), "--warmup-requests", str(warmup),
                   "--seed", str(PROBE_SEED), "--out", str(where)]  # fmt: skip
        before, client = {pid: cpu_seconds(pid) for pid in processes.pids}, _children_cpu()
        _run(command, client_cores, out / f"{name}.log")
        spent = {pid: cpu_seconds(pid) - was for pid, was in before.items()}
        records = [json.loads(line) for line in (where / "requests.jsonl").read_text().splitlines()]
        runs.append({
            "tokens": statistics.fmean(record["output_tokens"] or 0 for record in records),
            "servers_cpu_s": [spent[pid] for pid in processes.servers],
            "engines_cpu_s": [spent[pid] for pid in processes.engines],
            "router_cpu_s": spent.get(processes.router, 0.0), "client_cpu_s": _children_cpu() - client,
            "records": str(where / "requests.jsonl"),
        })  # fmt: skip
    return probe_figures(runs[1:], requests + warmup, processes.router is not None)


def probe_figures(runs: list[dict[str, Any]], sent: int, routed: bool) -> dict[str, Any]:
    """From the one-token run and the long run (each `sent` requests): per request, way_in_cpu_s
    (the API servers' own CPU, not their engines'), engine_cpu_s (the engine cores', their steps
    included) and router_cpu_s; per token, stream_cpu_s, behind a router only (one worker's client
    has a core of its own, and its API server's streaming is in the calibrated token overhead):
    what the router and the load generator spend more in the long run, per extra token (their
    start-up costs cancel)."""
    short, long = runs
    stream = 0.0
    if routed:
        shared = [run["router_cpu_s"] + run["client_cpu_s"] for run in runs]
        stream = max(0.0, (shared[1] - shared[0]) / (sent * (long["tokens"] - short["tokens"])))
    return {"way_in_cpu_s": sum(short["servers_cpu_s"]) / sent, "engine_cpu_s": sum(short["engines_cpu_s"]) / sent,
            "router_cpu_s": short["router_cpu_s"] / sent, "stream_cpu_s": stream, "requests": sent, "runs": runs}  # fmt: skip


def request_cpu(probe: dict[str, Any], profile: Path) -> float:
    """The engine cores' CPU per request outside their steps: the probe's one-token requests'
    engine CPU less the profile's time for the step each made (its prompt's uncached part, one
    token sampled). The serving loop's time around that step, which the calibration also counts
    per step (at most its c=1 TPOT gap, under a millisecond here), is left in."""
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.profiles import Profile
    from tokenworks.plan.step import StepShape

    profiled = FittedLatency.from_profile(Profile.load(profile))
    steps = []
    for line in Path(probe["runs"][0]["records"]).read_text().splitlines():
        record = json.loads(line)
        cached = record.get("cached_tokens") or 0
        steps.append(profiled.step_seconds(StepShape(((record["input_tokens"] - cached, cached),), 1)))
    return max(0.0, probe["engine_cpu_s"] - statistics.fmean(steps))


def validate_options(figures: dict[str, float | None]) -> list[str]:
    """`plan validate`'s options for the figures measured (in seconds), in milliseconds."""
    options: list[str] = []
    for key, option in VALIDATE_OPTIONS:
        if figures.get(key) is not None:
            options += [option, f"{figures[key] * 1e3:.4f}"]
    return options


def _run(command: list[str], cores: list[int] | None, log: Path) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                              preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)  # fmt: skip
    if done.returncode:
        raise PlanError(f"the serving CPU probe's `tokenworks bench run` failed (status {done.returncode}): see {log}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
