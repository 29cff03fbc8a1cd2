"""Sweeps: one point per load level (concurrency or request rate) per input/output length pair.

Load rises until the server is saturated, because points past saturation only add queueing:
in a concurrency sweep, a point whose output throughput is less than 5% above the best point
before it; in a rate sweep, a point that completes less than 90% of the offered rate, or
whose queue grew through the run (the `saturation` flag). The saturated point is kept (it
shows where the knee is) and the sweep of that length pair ends there.

The frontiers drawn from the points (throughput, cost and energy against tokens/s per user,
within one length pair) are defined in pareto.py; report.py writes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tokenworks.bench.client import EndpointInfo
from tokenworks.bench.economics import PriceBook
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.metrics import CapacitySearch, find_capacity
from tokenworks.bench.pareto import pair_label
from tokenworks.bench.prompts import PromptTokenizer
from tokenworks.bench.runner import Accounting, PointResult, Target, check_endpoint, measure_point, prompt_tokenizer
from tokenworks.bench.slo import SLO
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.errors import BenchError

THROUGHPUT_GAIN = 1.05  # a concurrency step that adds less than 5% throughput means saturation
RATE_ACHIEVED = 0.90  # completing less than 90% of the offered request rate means saturation


@dataclass(slots=True)
class SweepPlan:
    concurrencies: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    rates: list[float] | None = None  # open-loop rates instead (concurrencies[0] caps them when given)
    io_pairs: list[tuple[str, str]] = field(default_factory=lambda: [("128", "128")])
    requests_per_point: int = 64  # at least 2x the concurrency is used at every point
    duration: float | None = None  # seconds per point instead of a request count
    stop_when_saturated: bool = True

    def validate(self) -> None:
        if not self.rates and (not self.concurrencies or min(self.concurrencies) < 1):
            raise BenchError("a sweep needs concurrency levels of at least 1, or request rates")
        if self.rates and min(self.rates) <= 0:
            raise BenchError(f"request rates must be above 0, got {self.rates}")
        if not self.io_pairs:
            raise BenchError("a sweep needs at least one input/output length pair")

    def levels(self) -> list[tuple[int | None, float | None]]:
        if self.rates:
            cap = self.concurrencies[0] if self.concurrencies and len(self.concurrencies) == 1 else None
            return [(cap, rate) for rate in sorted(self.rates)]
        return [(concurrency, None) for concurrency in sorted(set(self.concurrencies))]


@dataclass(slots=True)
class SweepResult:
    endpoint: EndpointInfo
    points: list[PointResult]
    saturated: dict[str, str]  # io pair label -> why its sweep stopped early


def point_label(pair: str, concurrency: int | None, rate: float | None) -> str:
    level = f"rate={rate:g}/s" if rate is not None else f"c={concurrency}"
    return f"{pair} {level}"


def saturation_reason(point: PointResult, earlier: list[PointResult]) -> str | None:
    """Why this point shows the server saturated, or None."""
    if point.load.request_rate is not None:
        achieved = point.metrics.request_throughput or 0.0
        if achieved < RATE_ACHIEVED * point.load.request_rate:
            return f"completed {achieved:.2f} requests/s of the {point.load.request_rate:g} offered"
        if any(flag.code == "saturation" for flag in point.flags):
            return "the queue grew through the run"
        return None
    best = max((p.metrics.output_throughput or 0.0 for p in earlier), default=None)
    current = point.metrics.output_throughput or 0.0
    if best and current < THROUGHPUT_GAIN * best:
        return f"concurrency {point.load.concurrency} gave {current:.1f} output tokens/s, under 5% above {best:.1f}"
    return None


async def _prepare(target: Target, accounting: Accounting) -> tuple[PriceBook, EndpointInfo, PromptTokenizer | None]:
    """What every point needs, checked before any load: the prices, the endpoint and model, the tokenizer."""
    book = accounting.book()
    book.get(accounting.hardware)  # an unknown hardware name fails here
    return book, await check_endpoint(target), prompt_tokenizer(target)


async def run_sweep(
    target: Target,
    workload: WorkloadOptions,
    base_load: LoadOptions,
    plan: SweepPlan,
    slo: SLO | None,
    accounting: Accounting,
    console: Console,
    on_point: Callable[[PointResult], None] | None = None,
) -> SweepResult:
    plan.validate()
    book, endpoint, tokenizer = await _prepare(target, accounting)
    points: list[PointResult] = []
    saturated: dict[str, str] = {}
    with Progress(
        TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bars:
        for input_tokens, output_tokens in plan.io_pairs:
            pair = pair_label(input_tokens, output_tokens)
            pair_workload = replace(workload, input_tokens=input_tokens, output_tokens=output_tokens)
            pair_points: list[PointResult] = []
            for concurrency, rate in plan.levels():
                count = None if plan.duration else max(plan.requests_per_point, 2 * (concurrency or 1))
                load = replace(
                    base_load, concurrency=concurrency, request_rate=rate, num_requests=count, duration=plan.duration
                )
                label = point_label(pair, concurrency, rate)
                task = bars.add_task(label, total=count)
                point = await measure_point(
                    target, pair_workload, load, slo, accounting, book, label, base_load.seed, tokenizer,
                    on_progress=lambda done, total, task=task: bars.update(task, completed=done, total=total),
                )  # fmt: skip
                bars.update(task, completed=point.metrics.requests, total=point.metrics.requests)
                if on_point:
                    on_point(point)
                reason = saturation_reason(point, pair_points)
                pair_points.append(point)
                if reason and plan.stop_when_saturated:
                    saturated[pair] = reason
                    break
            points += pair_points
    return SweepResult(endpoint, points, saturated)


async def run_capacity(
    target: Target,
    workload: WorkloadOptions,
    base_load: LoadOptions,
    slo: SLO,
    accounting: Accounting,
    low: float,
    high: float,
    requests_per_point: int,
    console: Console,
    tolerance: float = 0.1,  # requests/s between the passing and the failing rate
    max_steps: int = 8,
) -> tuple[SweepResult, CapacitySearch]:
    """DistServe's capacity: the highest request rate whose SLO attainment is at least 90%."""
    book, endpoint, tokenizer = await _prepare(target, accounting)
    points: list[PointResult] = []
    pair = pair_label(str(workload.input_tokens), str(workload.output_tokens))
    loop = asyncio.get_running_loop()

    def measure(rate: float) -> float:
        load = replace(base_load, request_rate=rate, num_requests=requests_per_point)
        label = point_label(pair, base_load.concurrency, rate)
        console.print(f"measuring {label}")
        future = asyncio.run_coroutine_threadsafe(
            measure_point(target, workload, load, slo, accounting, book, label, base_load.seed, tokenizer), loop
        )
        point = future.result()
        points.append(point)
        return point.metrics.slo_attainment or 0.0

    # find_capacity is synchronous; run it in a thread so each measurement runs on this loop.
    search = await asyncio.to_thread(find_capacity, measure, low, high, tolerance, max_steps)
    return SweepResult(endpoint, points, {}), search
