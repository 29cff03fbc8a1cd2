"""The load generator: when each request of a run is sent, and the records of all of them.

Closed loop (`concurrency` N, no rate): N workers each send their next request as soon as
the last one ends, so exactly N are in flight. Open loop (`request_rate` R): requests leave
on a seeded Poisson or gamma schedule whatever the server's state; an optional concurrency
cap makes them wait for a slot, and their `intended_send` keeps the schedule's time so the
lag shows. Warmup requests go first, closed loop, and are flagged. A run stops scheduling
at `num_requests` or once `duration` has passed; requests in flight finish and count.
Multi-turn sessions send their turns one after another; sessions run side by side (in an
open loop the schedule gives each session's first turn, and later turns follow their reply).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from tokenworks.bench.client import OpenAIClient
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import RequestSpec, Workload
from tokenworks.errors import BenchError

Arrival = Literal["poisson", "gamma"]
ProgressCallback = Callable[[int, int | None], None]  # (requests done, total or None when duration-bound)


@dataclass(slots=True)
class LoadOptions:
    concurrency: int | None = None  # closed loop: requests in flight; open loop: the cap (None: none)
    request_rate: float | None = None  # requests/s; None or inf: as fast as the concurrency allows
    arrival: Arrival = "poisson"
    burstiness: float = 1.0  # the gamma shape: 1 is Poisson, below 1 burstier, above 1 more regular
    num_requests: int | None = None  # measured requests (warmup not included)
    duration: float | None = None  # seconds of scheduling, after warmup
    warmup_requests: int = 0
    timeout: float = 600.0  # seconds one request may take, from send to its last byte
    seed: int = 0  # the arrival schedule's seed

    @property
    def open_loop(self) -> bool:
        """An open loop has a schedule: a finite rate, or no concurrency (a burst of every request at once)."""
        return self.concurrency is None or (self.request_rate is not None and math.isfinite(self.request_rate))

    def validate(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise BenchError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise BenchError(f"--request-rate must be above 0 requests/s, got {self.request_rate}")
        if self.arrival not in ("poisson", "gamma"):
            raise BenchError(f"unknown arrival process {self.arrival!r}; use poisson or gamma")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise BenchError(f"--burstiness must be a number above 0, got {self.burstiness}")
        if self.arrival == "poisson" and self.burstiness != 1.0:
            raise BenchError("--burstiness is the shape of gamma arrivals: add --arrival gamma (Poisson is shape 1)")
        if self.num_requests is not None and self.num_requests < 1:
            raise BenchError(f"--num-requests must be at least 1, got {self.num_requests}")
        if self.duration is not None and not self.duration > 0:
            raise BenchError(f"--duration must be above 0 seconds, got {self.duration}")
        if self.warmup_requests < 0:
            raise BenchError(f"--warmup-requests must be at least 0, got {self.warmup_requests}")
        if not self.timeout > 0:
            raise BenchError(f"--timeout must be above 0 seconds, got {self.timeout}")
        if self.num_requests is None and self.duration is None:
            raise BenchError("bound the run: give --num-requests or --duration")
        unlimited_rate = self.request_rate is None or math.isinf(self.request_rate)
        if self.concurrency is None and unlimited_rate and self.num_requests is None:
            raise BenchError(
                "with neither --request-rate nor --concurrency every request is sent at once: "
                "give --num-requests, a rate or a concurrency"
            )


@dataclass(slots=True)
class LoadResult:
    records: list[RequestRecord]  # in schedule order, warmup requests included (flagged)
    started_at: float  # wall-clock time (time.time()) of the run's origin
    origin: float  # time.perf_counter() at the origin; every record time is seconds since it
    measured_start: float  # seconds since the origin when the measured requests began (after warmup)
    finished: float  # seconds since the origin when the last request ended
    options: LoadOptions


def _gaps(rate: float | None, arrival: Arrival, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Endless inter-arrival gaps with mean 1/rate (0 for an unlimited rate)."""
    if rate is None or math.isinf(rate):
        return itertools.repeat(0.0)
    if arrival == "gamma":
        scale = 1.0 / (rate * burstiness)  # mean shape * scale = 1/rate; CV = 1/sqrt(shape)
        return (rng.gammavariate(burstiness, scale) for _ in itertools.count())
    return (rng.expovariate(rate) for _ in itertools.count())


def _schedule(rate: float | None, arrival: Arrival, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Endless send times in seconds from the schedule's start; the first request goes at 0."""
    return itertools.accumulate(_gaps(rate, arrival, burstiness, rng), initial=0.0)


def arrival_times(
    rate: float | None, n: int, arrival: Arrival = "poisson", burstiness: float = 1.0, rng: random.Random | None = None
) -> list[float]:
    """The first n send times of an open-loop schedule (seconds from its start, from 0)."""
    return list(itertools.islice(_schedule(rate, arrival, burstiness, rng or random.Random(0)), n))


class _Budget:
    """How many more requests may start (None: any number), and until when (perf_counter)."""

    def __init__(self, count: int | None, deadline: float | None) -> None:
        self.count, self.deadline = count, deadline

    def take(self) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.count is not None:
            self.count -= 1
        return True


class _Run:
    def __init__(
        self, client: OpenAIClient, workload: Workload, options: LoadOptions, on_progress: ProgressCallback | None
    ) -> None:
        self.client, self.workload, self.options, self.on_progress = client, workload, options, on_progress
        self.total = options.warmup_requests + options.num_requests if options.num_requests is not None else None
        # with a known count, build every prompt before the clock starts, off the sending path
        self.specs = iter(workload.take(self.total)) if self.total is not None else iter(workload)
        self.records: list[RequestRecord] = []
        self.done = 0
        self.origin = 0.0

    async def send(self, spec: RequestSpec, warmup: bool, intended: float | None) -> str | None:
        record = RequestRecord(
            index=len(self.records), warmup=warmup, intended_send=intended, sent=0.0,
            requested_output_tokens=spec.max_tokens, session=spec.session, turn=spec.turn,
        )  # fmt: skip
        self.records.append(record)
        reply = await self.client.send(spec, record)
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        return reply

    async def chain(
        self, spec: RequestSpec, warmup: bool, intended: float | None, budget: _Budget, slots: asyncio.Semaphore | None
    ) -> None:
        """One request, then (multi-turn) its session's next turns while the budget allows."""
        while True:
            if slots is None:
                reply = await self.send(spec, warmup, intended)
            else:
                async with slots:
                    reply = await self.send(spec, warmup, intended)
            next_spec = self.workload.next_turn(spec, reply) if reply is not None else None
            if next_spec is None or not budget.take():
                return
            spec = next_spec
            if intended is not None:  # open loop: the next turn is due the moment its reply arrived
                intended = time.perf_counter() - self.origin

    async def closed_loop(self, concurrency: int, budget: _Budget, warmup: bool) -> None:
        async def worker() -> None:
            while budget.take():
                await self.chain(next(self.specs), warmup, None, budget, None)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(self, start: float, budget: _Budget) -> None:
        """Send on the schedule from `start` (perf_counter seconds)."""
        options = self.options
        rng = random.Random(options.seed)
        slots = asyncio.Semaphore(options.concurrency) if options.concurrency is not None else None
        tasks = []
        for offset in _schedule(options.request_rate, options.arrival, options.burstiness, rng):
            if options.duration is not None and offset >= options.duration:
                break
            if not budget.take():
                break
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            intended = start + offset - self.origin
            tasks.append(asyncio.create_task(self.chain(next(self.specs), False, intended, budget, slots)))
        await asyncio.gather(*tasks)


async def run_load(
    client: OpenAIClient, workload: Workload, options: LoadOptions, on_progress: ProgressCallback | None = None
) -> LoadResult:
    """Run the warmup, then the measured requests; every request's record, faults included."""
    options.validate()
    run = _Run(client, workload, options, on_progress)
    started_at = time.time()
    run.origin = client.start_run(options.timeout)
    if options.warmup_requests:
        width = min(options.warmup_requests, options.concurrency or options.warmup_requests)
        await run.closed_loop(width, _Budget(options.warmup_requests, None), warmup=True)
    measured_start = time.perf_counter()
    deadline = measured_start + options.duration if options.duration is not None else None
    budget = _Budget(options.num_requests, deadline)
    if options.open_loop:
        await run.open_loop(measured_start, budget)
    else:
        await run.closed_loop(options.concurrency, budget, warmup=False)
    return LoadResult(
        records=run.records,
        started_at=started_at,
        origin=run.origin,
        measured_start=measured_start - run.origin,
        finished=time.perf_counter() - run.origin,
        options=options,
    )
