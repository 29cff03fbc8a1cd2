"""`plan validate` as a library: simulate the points of a measured sweep, with what it recorded.

Each measured point is simulated with its own workload (length pair), level, seed, warmup and
request count, so the simulated client sends the same requests in the same order as the bench
did. The points run one after another on one fleet, as a sweep's points meet one live server:
its prefix cache still holds the blocks of the points before (every point of a sweep sends the
same first prompts, one seed), and a router keeps what it learnt. The simulated points are the
bench's own `PointResult`s (results.py), so both sides of the comparison are read from result
directories written by the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tokenworks.bench.runner import Accounting
from tokenworks.bench.workloads import build_workload
from tokenworks.errors import PlanError
from tokenworks.plan.calibrate import Serving, ServingLatency, client_gaps, now, overheads, way_ins
from tokenworks.plan.host_speed import measured_speed
from tokenworks.plan.load import WorkloadLoad
from tokenworks.plan.prompts import SimPrompts
from tokenworks.plan.results import SimulatedPoint, simulated_point
from tokenworks.plan.simulate import Fleet
from tokenworks.plan.simulator import SimulationStats
from tokenworks.plan.step import StepLatency, StepShape
from tokenworks.plan.validation import ResultsDir, SweepPoint, median_repeat


def simulate_points(
    fleet: Fleet, prompts: SimPrompts, measured: ResultsDir, points: list[SweepPoint] | None = None,
    on_point: Callable[[SimulatedPoint], None] | None = None,
) -> list[SimulatedPoint]:  # fmt: skip
    """Every point of `measured` (or those given), in order, on one fleet."""
    fleet.validate()
    accounting = Accounting()
    book = accounting.book()
    simulation = fleet.build()
    simulated = []
    for point in points if points is not None else measured.points:
        workload, load = measured.point_workload(point), measured.point_load(point)
        if workload.output_tokens is None:
            raise PlanError(f"{measured.directory} let the server choose output lengths; the simulator needs them")
        driver = WorkloadLoad(build_workload(workload, load.seed, prompts.counter), load, prompts)
        before = replace(simulation.stats, busy_seconds=list(simulation.stats.busy_seconds))
        stats = _difference(simulation.run(driver), before)
        entry = simulated_point(driver.records, stats, workload, load, None, accounting, book, point.label)
        simulated.append(entry)
        if on_point is not None:
            on_point(entry)
    return simulated


def _difference(now: SimulationStats, before: SimulationStats) -> SimulationStats:
    """This point's share of the simulation's counters, which run on over the points."""
    busy = [a - b for a, b in zip(now.busy_seconds, before.busy_seconds or [0.0] * len(now.busy_seconds), strict=True)]
    reasons = {key: count - before.route_reasons.get(key, 0) for key, count in now.route_reasons.items()}
    return SimulationStats(
        steps=now.steps - before.steps, busy_seconds=busy, preemptions=now.preemptions - before.preemptions,
        prompt_tokens=now.prompt_tokens - before.prompt_tokens, cached_tokens=now.cached_tokens - before.cached_tokens,
        route_reasons=reasons, end=now.end - before.end, wall_seconds=now.wall_seconds,
    )  # fmt: skip


def calibration_points(measured: ResultsDir) -> list[SweepPoint]:
    """The closed-loop points calibrate.py reads: the first at concurrency 1, then every other one."""
    closed = [p for p in measured.points if p.request_rate is None and p.concurrency]
    one = [p for p in closed if p.concurrency == 1]
    if not one:
        raise PlanError(
            f"{measured.directory} has no closed-loop point at concurrency 1 to calibrate the server's time outside "
            "the engine from: measure one (--concurrency 1,...), or give --arrival-delay-ms and --token-overhead-ms"
        )
    return one[:1] + [p for p in closed if p.concurrency > 1]


def calibrate(fleet: Fleet, prompts: SimPrompts, measured: ResultsDir) -> Serving:
    """calibrate.py's figures from the sweep's closed-loop points, each simulated as it ran (after
    the points before it, on one fleet): the TPOT gap at c=1, then each request's way in at c=1
    (with that gap on every step; of repeats, the median one's there), then every closed-loop
    point's gap with those way-ins and the host's speed at c=1 drawn a window at a time
    (host_speed.py), through which one line splits the gaps into step and token overheads. The
    fleet's serving CPU (`way_in_cpu`, `request_cpu`, `router_cpu`, `stream_cpu`: measured apart,
    by process CPU time) is simulated throughout, the way-ins' share on the cores once they are
    known."""
    chosen = calibration_points(measured)
    one = chosen[0]
    upto_one = measured.points[: measured.points.index(one) + 1]
    # Of repeats, the requests of the one whose TTFT p50 at c=1 is the median compared: pooled,
    # one slow repeat's way-ins would move the draws' median off it (by 30 ms on small behind
    # two workers, a repeat with 75 ms way-ins against 8 and 20; docs/benchmarks.md, session 25).
    live = sorted(measured.runs[median_repeat(one, "ttft_p50_s")].get(one.label, []), key=lambda r: r.sent)
    speed, window = measured_speed(live)
    # The gap at c=1 and the way-ins are read with the host at its mean speed throughout (a
    # simulated request's drawn speed is not the measured one's: their difference would go into
    # the way-ins, each clamped at 0, and lift the simulated TTFTs); the sweep's gaps with it drawn.
    bare = replace(fleet, arrival_delay=0.0, delivery_delay=0.0, way_in=(), client_gaps=(), way_in_cpu=0.0,
                   host_speed=(), speed_window=0.0)  # fmt: skip
    gap_one = _tpot_gap(one, simulate_points(bare, prompts, measured, upto_one)[-1], measured)
    # At c=1 every step samples one token, so how the gap splits does not move a TTFT there (a
    # negative gap, the profile slower than the server, adds nothing: a step is never shortened).
    loaded = replace(bare, latency=ServingLatency(fleet.latency, *overheads([(1.0, gap_one)])))
    simulated_one = simulate_points(loaded, prompts, measured, upto_one)[-1].point
    ttft = simulated_one.metrics.ttft.p50
    measured_ttft = one.figures.get("ttft_p50_s")
    if measured_ttft is None or ttft is None:
        raise PlanError(f"the point {one.label} of {measured.directory} has no TTFT to calibrate from")
    by_index = {record.index: record for record in simulated_one.records}
    answered = [r for r in live if not r.warmup and r.ok and r.first_token is not None and r.index in by_index]
    ways = way_ins([r.first_token - r.sent for r in answered],
                   [by_index[r.index].first_token - by_index[r.index].sent for r in answered])  # fmt: skip
    finished = [r for r in live if r.last_token is not None]
    gaps_out = client_gaps([r.sent for r in finished], [r.last_token for r in finished])
    gaps, batches = (gap_one,), (1.0,)
    if len(chosen) > 1:
        recorder = _SampleRecorder(fleet.latency)
        upto = measured.points[: max(measured.points.index(point) for point in chosen) + 1]
        on_core = replace(bare, latency=recorder, way_in=ways, client_gaps=gaps_out, way_in_cpu=fleet.way_in_cpu,
                          host_speed=speed, speed_window=window)  # fmt: skip
        simulated = {entry.point.label: entry for entry in simulate_points(on_core, prompts, measured, upto,
                                                                            recorder.point_ends)}  # fmt: skip
        gaps = tuple(_tpot_gap(point, simulated[point.label], measured) for point in chosen)
        # The batch a sampled token shares its step with, on average over tokens (sum s^2 / sum s):
        # what TPOT sees, where a mean over steps would count the ramp's and the tail's small steps.
        batches = tuple(sum(s * s for s in steps) / max(sum(steps), 1)
                        for steps in (recorder.points[point.label] for point in chosen))  # fmt: skip
    step, token = overheads(list(zip(batches, gaps, strict=True)))
    return Serving(
        arrival_delay=max(0.0, measured_ttft - ttft), step_overhead=step, token_overhead=token,
        source=str(measured.directory), points=tuple(p.label for p in chosen), created=now(),
        tpot_gaps=gaps, batches=batches, ttft_gap=measured_ttft - ttft, way_in=ways, client_gaps=gaps_out,
        way_in_cpu=fleet.way_in_cpu, request_cpu=fleet.request_cpu, router_cpu=fleet.router_cpu,
        stream_cpu=fleet.stream_cpu, host_speed=speed, speed_window=window,
    )  # fmt: skip


def _tpot_gap(point: SweepPoint, simulated: SimulatedPoint, measured: ResultsDir) -> float:
    tpot = point.figures.get("tpot_p50_s")
    if tpot is None or simulated.point.metrics.tpot.p50 is None:
        raise PlanError(f"the point {point.label} of {measured.directory} has no TPOT to calibrate from")
    return tpot - simulated.point.metrics.tpot.p50


class _SampleRecorder:
    """A step-latency model passing steps through, keeping each point's sampled tokens a step."""

    def __init__(self, latency: StepLatency) -> None:
        self.latency = latency
        self.points: dict[str, list[int]] = {}
        self._current: list[int] = []

    def step_seconds(self, step: StepShape) -> float:
        self._current.append(step.num_samples)
        return self.latency.step_seconds(step)

    def point_ends(self, entry: SimulatedPoint) -> None:
        self.points[entry.point.label], self._current = self._current, []
