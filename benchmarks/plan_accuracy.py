"""How close the simulator comes to measurement: `tokenworks plan validate` over live sweeps on this machine.

    .venv/bin/python benchmarks/plan_accuracy.py [--shapes tiny,small] [--repeats 3] [--quick] [--json PATH]

Not a test and not run in CI. Issue 23's goals, on this machine, for the tiny and small shapes
(.peers/bench-engine/models/{tiny,small}, built by benchmarks/engine_vs_peers.py): median absolute
error <= 10% on TTFT p50, TPOT p50 and output throughput, <= 20% on TTFT p99 and TPOT p99, prefix
hit rate within 5 points. Per shape:

1. `tokenworks plan profile MODEL --threads 1`, pinned to core 0 (as the worker runs), into
   .peers/plan-accuracy/<shape>/profile.json, at every run (8 s for tiny): the steps must be
   timed in the same minutes as the sweeps they are validated against. This host's speed drifts
   by more than the goals over hours (tiny's steps took 0.58-0.94x at 07:57 what they took at
   05:09 the same day; docs/benchmarks.md, Plan, session 21); --reuse-profile keeps the last one.
2. One worker: `tokenworks serve --threads 1` pinned to core 0 (its API server and engine core
   process both: the engine's core is shared with the streaming, as it is served), the load
   generator pinned to core 1. A closed-loop sweep (concurrency 1..32), then a Poisson sweep at
   25%, 50% and 75% of the closed loop's best request rate (another seed: other prompts than
   the closed loop's); synthetic prompts.
3. Two workers (core 0 and core 1) behind `tokenworks router --policy kv` (unpinned, with the
   client: there is no third core), a shared-prefix workload, the same two sweeps.
4. For each deployment, the closed-loop sweep once more (seed 2: other prompts of the same
   lengths: "again"), simulated with the first sweep's calibration (out of sample), and compared
   with the first sweep as measured: the "noise" row, how far two measurements of one sweep
   minutes apart differ on this host, a floor under any simulation's error.
   Every sweep meets a deployment started for it, as every simulated sweep starts from a fresh
   fleet (empty prefix caches, a router that has learnt nothing yet).
   Each of the three sweeps is measured --repeats times (default 3), interleaved (closed,
   poisson, again, closed, ...; <N>w-<sweep>, then <N>w-<sweep>-r2, -r3), and compared by its
   median: `plan validate --measured` once a repeat, each figure the median of its point's
   repeats (tokenworks/plan/validation.py), the calibration's per-request draws at c = 1 the
   median repeat's there. Why: a two-worker closed loop measured twice minutes apart differed by
   14-24% on TTFT p50 (session 24's noise rows), more than the goals, and one point measured in
   a busy minute carried it; with medians of 3, small's 4% (docs/benchmarks.md, Plan, session 25).
5. Then what serving costs the workers' cores outside their engines, measured by process CPU time
   (tokenworks/plan/serving_cpu.py, which the factory's plan stage runs too): the API servers'
   and the router's CPU per request (the way in, which the simulation puts on the worker's core
   ahead of its steps), and with two workers the router's and the load generator's CPU per
   streamed token (they have no core of their own; the simulation shares it out among the busy
   workers' cores). Into <shape>/<N>w-way-in-cpu.json (the runs in <shape>/<N>w-way-in/);
   `plan validate --way-in-cpu-ms --router-cpu-ms --stream-cpu-ms` take them. Measured apart,
   not fitted.

Each sweep is `tokenworks bench sweep --tokenizer MODEL --no-stop` (so the simulation sends the
prompts the server saw), then `tokenworks plan validate --measured`. A deployment's closed-loop
sweep calibrates the server's time outside the engine on its points (`--recalibrate`, written
into a copy of the profile: the per-step and per-token overheads, a line through every point's
TPOT gap, each c=1 request's way in and client gap, which the simulation draws again per
request, and the host's speed there, drawn again a window at a time), and its rate sweep and
repeat are simulated with that calibration, not refitted; each simulated figure is the median
of `plan validate`'s three simulations, other draws each (session 26). The
table gives each sweep's median absolute errors against the goals, then over all the points of
each deployment and of the shape. With every sweep: the CPU (in cores) that processes outside this benchmark used
while it ran ("other"), and the load average: the figures are only as quiet as the host.

--quick: 16 requests a point (32 at c=32), concurrency 1,4,16,32, for a smoke run (with --repeats 1).
--requests-per-point N: N requests a point, with --quick too (bench sweep sends at least 2x the
concurrency); default 32, the goals' runs. 256 on tiny (session 22) took 8 minutes and did not
bring the noise row down (the host's speed drifts between sweeps minutes apart by more than the
sampling error of 32 requests), but it shows a closed loop's steady state at c = 16-32, which 32
requests a point (one or two waves) do not reach.
--revalidate: measure nothing; validate the sweeps --json names again (after a change to the
simulator or the calibration), from the directory each entry names (older results name none:
.peers/plan-accuracy/<shape>/, where the latest run of that shape is), with the CPU figures of
<N>w-way-in-cpu.json there. The validations are written beside the sweeps (<N>w-<sweep>-validation)
and the cells to --out (default: --json's name with .revalidated), never over --json. Results:
--json PATH (default .peers/plan-accuracy/results.json); each sweep's directories under
.peers/plan-accuracy/<shape>/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, machine_busy_ticks
from router_policies import KV_EVENTS, free_port, stop, thread_env, wait_healthy

from tokenworks.plan.serving_cpu import (
    CPU_FIGURES,
    ServingProcesses,
    children,
    probe_serving_cpu,
    request_cpu,
    validate_options,
)
from tokenworks.plan.validation import compare, median_of, read_results

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / ".peers" / "bench-engine" / "models"
WORK = ROOT / ".peers" / "plan-accuracy"
KV_GIB = 1.0  # each worker's KV cache, told to the simulation too
METRICS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "output_throughput", "prefix_hit_rate")
SHORT = {"ttft_p50_s": "TTFT p50", "ttft_p99_s": "TTFT p99", "tpot_p50_s": "TPOT p50", "tpot_p99_s": "TPOT p99",
         "output_throughput": "out tok/s", "prefix_hit_rate": "hit rate"}  # fmt: skip
SYNTHETIC = ["--workload", "synthetic", "--input-tokens", "128", "--output-tokens", "64"]
SHARED = ["--workload", "shared-prefix", "--num-prefixes", "4", "--questions-per-prefix", "16", "--prefix-tokens",
          "512", "--input-tokens", "64", "--output-tokens", "32"]  # fmt: skip
RATE_FRACTIONS = (0.25, 0.5, 0.75)
SWEEPS = ("closed", "poisson", "again")  # a deployment's sweeps, in the order each repeat measures them
REPEATS = 3  # each sweep measured 3 times, compared by its median (--repeats in the docstring: why)
REQUESTS_PER_POINT = 32  # the goals' runs (--requests-per-point in the docstring: why not more)


def log(message: str) -> None:
    print(f"[plan_accuracy] {message}", flush=True)


def tokenworks(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenworks", *args]


def pinned_run(command: list[str], cores: list[int] | None, log_path: Path) -> None:
    with log_path.open("w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, env=thread_env(1),
                       preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)  # fmt: skip


def spawn(command: list[str], cores: list[int] | None, log_path: Path) -> subprocess.Popen:
    out = log_path.open("w")
    out.write(" ".join(command) + "\n")
    out.flush()
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=thread_env(1), start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)  # fmt: skip


def process_ticks(pid: int) -> int:
    """utime + stime of a live process and its live children (an engine core is a child)."""
    total = 0
    for each in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


class Deployment:
    """One or two `tokenworks serve` workers (worker i pinned to core i) and, with two, the kv router,
    started for one sweep (their logs named after it)."""

    def __init__(self, model: Path, workers: int, logs: Path, sweep: str) -> None:
        self.model, self.count, self.logs, self.sweep = model, workers, logs, sweep
        self.processes: list[subprocess.Popen] = []
        self.url = ""

    def __enter__(self) -> Deployment:
        try:
            urls = []
            for index in range(self.count):
                port = free_port()
                command = tokenworks("serve", str(self.model), "--host", "127.0.0.1", "--port", str(port),
                                     "--threads", "1", "--kv-cache-memory-gib", str(KV_GIB), "--max-model-len", "2048")  # fmt: skip
                if self.count > 1:
                    command += ["--kv-events-config", KV_EVENTS]
                self.processes.append(spawn(command, [index], self._log(f"worker{index}")))
                urls.append(f"http://127.0.0.1:{port}")
            for url, process in zip(urls, self.processes, strict=True):
                wait_healthy(url, process, "a worker")
            self.url = urls[0]
            if self.count > 1:
                port = free_port()
                command = tokenworks("router", "--policy", "kv", "--port", str(port), "--tokenizer", str(self.model))
                for url in urls:
                    command += ["--worker", url]
                self.processes.append(spawn(command, None, self._log("router")))
                self.url = f"http://127.0.0.1:{port}"
                wait_healthy(self.url, self.processes[-1], "the router", 120)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # every worker's KV event feed found before the load
                    with urllib.request.urlopen(f"{self.url}/workers", timeout=5) as response:
                        if all(w["kv_events"] for w in json.loads(response.read())["workers"]):
                            break
                    time.sleep(0.2)
                time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _log(self, process: str) -> Path:
        return self.logs / f"{self.count}w-{self.sweep}-{process}.log"

    def serving_processes(self) -> ServingProcesses:
        router = self.processes[-1].pid if self.count > 1 else None
        return ServingProcesses.of_servers([process.pid for process in self.processes[: self.count]], router)

    def ticks(self) -> int:
        return sum(process_ticks(p.pid) for p in self.processes if p.poll() is None)

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            stop(process, 30)


def measure(deployment: Deployment, model: Path, workload: list[str], levels: list[str], per_point: int,
            out: Path, client_cores: list[int] | None) -> dict[str, Any]:  # fmt: skip
    """One `bench sweep` (levels: --concurrency X or --request-rate Y) and the host's load while it ran."""
    if out.exists():
        shutil.rmtree(out)
    command = tokenworks("bench", "sweep", "--url", deployment.url, "--tokenizer", str(model), *workload, *levels,
                         "--requests-per-point", str(per_point), "--no-stop", "--out", str(out))  # fmt: skip
    busy0, ours0, client0 = machine_busy_ticks()[0], deployment.ticks(), _children_ticks()
    began = time.monotonic()
    pinned_run(command, client_cores, out.with_suffix(".log"))
    wall = time.monotonic() - began
    ours = deployment.ticks() - ours0 + _children_ticks() - client0
    hz = os.sysconf("SC_CLK_TCK")
    other = max(0.0, (machine_busy_ticks()[0] - busy0 - ours) / hz / wall)
    return {"wall_s": wall, "other_cores": other, "ours_cores": ours / hz / wall, "load_average": os.getloadavg()[0]}


def _children_ticks() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def validate(model: Path, profile: Path, repeats: list[Path], out: Path, workers: int, recalibrate: bool,
             cpu: dict[str, float]) -> dict:  # fmt: skip
    command = tokenworks("plan", "validate", str(model), "--profile", str(profile), "--kv-cache-memory-gib",
                         str(KV_GIB), "--replicas", str(workers), "--router-policy", "kv", "--out", str(out))  # fmt: skip
    for measured in repeats:
        command += ["--measured", str(measured)]
    command += validate_options(cpu)
    if recalibrate:
        command.append("--recalibrate")
    pinned_run(command, None, out.with_suffix(".log"))
    return json.loads((out / "validation.json").read_text())


def best_request_rate(measured: Path) -> float:
    run = json.loads((measured / "run.json").read_text())
    return max(point["request_throughput"] or 0.0 for point in run["points"])


def run_shape(shape: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    model = MODELS / shape
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model} is missing: build it with benchmarks/engine_vs_peers.py")
    work = WORK / shape
    work.mkdir(parents=True, exist_ok=True)
    profile = work / "profile.json"
    if not args.reuse_profile or not profile.is_file():
        log(f"{shape}: plan profile --threads 1 on core 0")
        pinned_run(tokenworks("plan", "profile", str(model), "--threads", "1", "--out", str(profile)), [0],
                   work / "profile.log")  # fmt: skip
    concurrency = "1,4,16,32" if args.quick else "1,2,4,8,16,32"
    per_point = args.requests_per_point or (16 if args.quick else REQUESTS_PER_POINT)
    sweeps = []
    for workers, workload, name in ((1, SYNTHETIC, "synthetic"), (2, SHARED, "shared-prefix")):
        if workers not in args.workers:
            continue
        tag = f"{workers}w"
        client = [1] if workers == 1 else None
        # Each sweep on a deployment started for it, as the simulation starts each from a fresh
        # fleet: empty prefix caches, and a router that has learnt nothing of its workers. (Kept
        # from the sweep before, the live router had fitted its workers' speeds on the closed
        # loop and kept each prefix of the rate sweep on one worker where the simulated one, new
        # to its replicas, computed some twice: 81% hits against 73% at the first rate, and the
        # simulated TPOT p50 42% short at the last; docs/benchmarks.md, Plan, session 24.)
        hosts: dict[str, list[dict[str, Any]]] = {kind: [] for kind in SWEEPS}
        rates: list[float] = []
        # Repeats interleaved (closed, poisson, again, closed, ...): a busy minute meets one repeat
        # of each sweep, not every repeat of one, and the median of a point's repeats sets it aside.
        for repeat in range(1, args.repeats + 1):
            for kind in SWEEPS:
                if kind == "poisson" and not rates:  # the first closed loop's best rate sets them
                    rates = [round(f * best_request_rate(work / f"{tag}-closed"), 2) for f in RATE_FRACTIONS]
                levels = {
                    "closed": ["--concurrency", concurrency],
                    "poisson": ["--request-rate", ",".join(map(str, rates)), "--seed", "1"],  # other prompts
                    "again": ["--concurrency", concurrency, "--seed", "2"],
                }[kind]  # fmt: skip
                directory = repeat_name(tag, kind, repeat)
                with Deployment(model, workers, work, directory.removeprefix(f"{tag}-")) as deployment:
                    log(f"{shape}, {workers} worker(s), {name}: {kind} {' '.join(levels)}, repeat {repeat} of "
                        f"{args.repeats}")  # fmt: skip
                    hosts[kind].append(measure(deployment, model, workload, levels, per_point, work / directory,
                                               client))  # fmt: skip
                    if kind == SWEEPS[-1] and repeat == args.repeats:
                        log(f"{shape}, {workers} worker(s): serving's CPU per request and per token (concurrency 1)")
                        processes = deployment.serving_processes()
                        probe = probe_serving_cpu(deployment.url, model, workload, processes, work / f"{tag}-way-in",
                                                  client)  # fmt: skip
                        (work / f"{tag}-way-in-cpu.json").write_text(json.dumps(probe, indent=1) + "\n")
        host = {kind: host_of(each) for kind, each in hosts.items()}
        sweeps += validate_deployment(shape, workers, name, host, work, args.repeats)
    return sweeps


def repeat_name(tag: str, kind: str, repeat: int) -> str:
    """A sweep's results directory: <N>w-<kind> for the first repeat (as before repeats), -r2, -r3 on."""
    return f"{tag}-{kind}" + (f"-r{repeat}" if repeat > 1 else "")


def host_of(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The host while a sweep's repeats ran: their wall time in all, the busiest repeat's other
    processes and load average (the figures are only as quiet as that), and each repeat's."""
    return {"wall_s": sum(r["wall_s"] for r in repeats), "other_cores": max(r["other_cores"] for r in repeats),
            "load_average": max(r["load_average"] for r in repeats), "repeats": repeats}  # fmt: skip


def validate_deployment(
    shape: str, workers: int, name: str, hosts: dict[str, dict], work: Path, repeats: int
) -> list[dict[str, Any]]:
    """`plan validate` on a deployment's three sweeps in `work`, each the median of its repeats
    (the closed loop calibrating, on a copy of the profile of its own), and the closed loop against
    the closed loop with other prompts (again), both measured."""
    model, tag = MODELS / shape, f"{workers}w"
    calibrated = work / f"profile-{tag}.json"  # each deployment's own calibration
    shutil.copy(work / "profile.json", calibrated)
    probe = work / f"{tag}-way-in-cpu.json"  # probe_serving_cpu's figures, when measured
    cpu = json.loads(probe.read_text()) if probe.is_file() else {}
    if "engine_cpu_s" in cpu:
        cpu["request_cpu_s"] = request_cpu(cpu, work / "profile.json")
    sweeps = []
    measured = {kind: [work / repeat_name(tag, kind, r) for r in range(1, repeats + 1)] for kind in SWEEPS}
    for kind in SWEEPS:
        out = work / f"{tag}-{kind}-validation"
        result = validate(model, calibrated, measured[kind], out, workers, kind == "closed", cpu)
        sweeps.append({"shape": shape, "workers": workers, "workload": name, "sweep": kind, "host": hosts[kind],
                       "directory": str(work.relative_to(ROOT)), "repeats": repeats, "validation": result,
                       "serving_cpu": {k: cpu.get(k) for k in CPU_FIGURES}})  # fmt: skip
    # The same sweep measured twice, minutes apart (other prompts of the same lengths), each the
    # median of its repeats: how far measurement moves on its own here.
    closed, again = (median_of([read_results(d) for d in measured[kind]]) for kind in ("closed", "again"))
    noise = compare(closed.points, again.points)
    sweeps.append({"shape": shape, "workers": workers, "workload": name, "sweep": "noise", "host": hosts["again"],
                   "directory": str(work.relative_to(ROOT)), "repeats": repeats, "validation": noise.to_json()})  # fmt: skip
    return sweeps


def revalidate(path: Path) -> list[dict[str, Any]]:
    """The validations of a run already measured (its --json), again with this tokenworks, on the
    sweeps in the directory each entry names (results written before entries named one: the
    latest run's, WORK/<shape>)."""
    entries = json.loads(path.read_text())
    sweeps = []
    for entry in (s for s in entries if s["sweep"] == "closed"):
        hosts = {s["sweep"]: s["host"] for s in entries
                 if (s["shape"], s["workers"]) == (entry["shape"], entry["workers"])}  # fmt: skip
        work = ROOT / entry["directory"] if "directory" in entry else WORK / entry["shape"]
        log(f"{entry['shape']}, {entry['workers']} worker(s): validating the sweeps measured in {work}")
        repeats = entry.get("repeats", 1)  # (results from before repeats measured each sweep once)
        sweeps += validate_deployment(entry["shape"], entry["workers"], entry["workload"], hosts, work, repeats)
    return sweeps


def table(sweeps: list[dict[str, Any]]) -> None:
    goals = sweeps[0]["validation"]["metrics"]
    header = f"{'shape':6} {'workers':>7} {'sweep':8} {'other':>6} {'load':>5} " + " ".join(
        f"{SHORT[m]:>10}" for m in METRICS
    )
    print(header)
    for sweep in sweeps:
        medians = sweep["validation"]["metrics"]
        print(f"{sweep['shape']:6} {sweep['workers']:>7} {sweep['sweep']:8} {sweep['host']['other_cores']:6.2f} "
              f"{sweep['host']['load_average']:5.2f} " + " ".join(_median(m, medians[m]) for m in METRICS))  # fmt: skip
    # Every simulated point of a deployment (its three sweeps), then of a shape (both deployments).
    groups = sorted({(s["shape"], str(s["workers"])) for s in sweeps} | {(s["shape"], "all") for s in sweeps})
    for shape, workers in groups:
        cells = []
        for metric in METRICS:
            errors = [abs(cell["cells"][metric]["error"]) for s in sweeps
                      if s["shape"] == shape and workers in ("all", str(s["workers"])) and s["sweep"] != "noise"
                      for cell in s["validation"]["points"] if cell["cells"][metric]["error"] is not None]  # fmt: skip
            median = statistics.median(errors) if errors else None
            cells.append(_median(metric, {"median_abs_error": median, "goal": goals[metric]["goal"],
                                          "passes": None if median is None else median <= goals[metric]["goal"]}))  # fmt: skip
        print(f"{shape:6} {workers:>7} {'points':8} {'':>6} {'':>5} " + " ".join(cells))
    print("goal: " + ", ".join(f"{SHORT[m]} <= {_shown(m, goals[m]['goal'])}" for m in METRICS))
    cpu = {(s["shape"], s["workers"]): s["serving_cpu"] for s in sweeps if s.get("serving_cpu")}
    print("serving CPU measured apart: " + "; ".join(
        f"{shape} {workers}w a request: API server {_ms(figures.get('way_in_cpu_s'))}, engine outside its steps "
        f"{_ms(figures.get('request_cpu_s'))}, router {_ms(figures.get('router_cpu_s'))}; a token: router and "
        f"client {_ms(figures.get('stream_cpu_s'))}" for (shape, workers), figures in cpu.items()))  # fmt: skip
    print("closed: calibrated on its own points (c=1..32); poisson and again (the closed loop measured again,")
    print("another seed): simulated with that calibration; noise: the closed loop against again, both measured;")
    print(f"each sweep the median of its repeats ({sweeps[0].get('repeats', 1)}); other, load: the busiest repeat's")


def _ms(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds * 1e3:.2f} ms"


def _median(metric: str, entry: dict) -> str:
    if entry["median_abs_error"] is None:
        return f"{'n/a':>10}"
    mark = "" if entry["passes"] else "*"
    return f"{_shown(metric, entry['median_abs_error']) + mark:>10}"


def _shown(metric: str, value: float) -> str:
    return f"{value:.1f}pt" if metric == "prefix_hit_rate" else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--workers", default="1,2", help="Deployments: 1 (one worker), 2 (two behind kv), or both.")
    parser.add_argument("--quick", action="store_true", help="Fewer levels and requests: a smoke run.")
    parser.add_argument("--requests-per-point", type=int, help=f"Requests at each point (default {REQUESTS_PER_POINT}, "
                        "16 with --quick); bench sweep sends at least 2x the concurrency.")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"Measurements of each sweep, interleaved, "
                        f"compared by their median (default {REPEATS}).")  # fmt: skip
    parser.add_argument(
        "--reuse-profile",
        action="store_true",
        help="Keep the last profile instead of profiling again (stale ones mislead).",
    )
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    parser.add_argument("--revalidate", action="store_true", help="Measure nothing: validate the sweeps of "
                        "--json (in the directories its entries name) again with this tokenworks.")  # fmt: skip
    parser.add_argument("--out", type=Path, help="--revalidate's cells (default: --json with .revalidated).")
    args = parser.parse_args()
    if args.revalidate:
        sweeps = revalidate(args.json)
        out = args.out or args.json.with_suffix(".revalidated.json")
        out.write_text(json.dumps(sweeps, indent=2) + "\n")
        table(sweeps)
        log(f"every cell in {out}")
        return
    args.workers = {int(w) for w in args.workers.split(",")}
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    log(f"{cpu_model()}, {os.cpu_count()} cores; tokenworks at {head.strip()}; load average "
        f"{os.getloadavg()[0]:.2f}; workers pinned one a core, --threads 1, KV cache {KV_GIB} GiB each")  # fmt: skip
    log(f"workloads: one worker {' '.join(SYNTHETIC[1:])}; two workers {' '.join(SHARED[1:])}")
    sweeps = []
    for shape in args.shapes.split(","):
        config = json.loads((MODELS / shape / "config.json").read_text())
        log(f"shape {shape}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
            f"vocab {config['vocab_size']}")  # fmt: skip
        sweeps += run_shape(shape, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(sweeps, indent=2) + "\n")
    table(sweeps)
    log(f"every cell in {args.json}; each sweep's table in its validation.log, under {WORK}")


if __name__ == "__main__":
    main()
