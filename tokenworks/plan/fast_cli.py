"""`plan simulate --mode fast`: the sweep's points through the fast mode, as the exact mode's runs.

Each point's requests are the exact mode's prompts (their lengths, prefix hits estimated from
their blocks), sent as the bench's load sends them; the run comes back as the bench's records and
the simulator's stats, so `plan simulate` writes the same results directory either way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.pareto import pair_label
from tokenworks.bench.sweep import point_label
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.errors import PlanError
from tokenworks.plan.fast import FastEngine, run_replica
from tokenworks.plan.fast_load import FastLoad, Sends
from tokenworks.plan.fast_results import records
from tokenworks.plan.fast_workload import from_prompts
from tokenworks.plan.linear_step import LinearStep
from tokenworks.plan.prompts import SimPrompts
from tokenworks.plan.simulate import Fleet, SimulatedRun
from tokenworks.plan.simulator import SimulationStats


def check_fast(replicas: int, replay: Path | None, base: LoadOptions) -> None:
    if replicas != 1:
        raise PlanError("--mode fast simulates one replica (plan fleet splits a load over replicas); "
                        "use --mode exact for several behind the router")  # fmt: skip
    if replay is not None:
        raise PlanError("--mode fast does not replay a request log; use --mode exact")
    if base.num_requests is None:
        raise PlanError("--mode fast needs --num-requests (not --duration)")


def simulate_fast(
    fleet: Fleet, prompts: SimPrompts, workload: WorkloadOptions, base: LoadOptions,
    points: list[tuple[int | None, float | None]], seed: int = 0,
) -> list[SimulatedRun]:  # fmt: skip
    engine = FastEngine.of(fleet.replica)
    step = LinearStep.of(fleet.latency)
    total = base.warmup_requests + base.num_requests
    requests = from_prompts(workload, prompts, total, engine.block_size, seed, fleet.replica.enable_prefix_caching)
    pair = pair_label(str(workload.input_tokens), str(workload.output_tokens))
    runs = []
    for concurrency, rate in points:
        load = replace(base, concurrency=concurrency, request_rate=rate)
        run = run_replica(engine, step, requests, Sends(FastLoad.of(load)))
        measured = slice(run.warmup, len(run.sent))
        stats = SimulationStats(
            steps=run.steps, busy_seconds=[run.busy_seconds], preemptions=run.preemptions,
            prompt_tokens=int(requests.input_tokens[measured].sum()),
            cached_tokens=int(requests.cached_tokens[measured].sum()), end=run.end, wall_seconds=run.wall_seconds,
        )  # fmt: skip
        runs.append(SimulatedRun(point_label(pair, concurrency, rate), load, records(run), stats))
    return runs
