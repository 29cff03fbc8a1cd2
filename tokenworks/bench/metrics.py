"""From request records to the figures a run is judged by: latencies, throughput, goodput, capacity.

Every formula is the one `docs/metrics.md` states. Times are seconds on the run's monotonic
clock; rates are per second of the run's window W (first profiled send to last completion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise

import numpy as np

from tokenworks.bench.records import RequestRecord
from tokenworks.bench.slo import SLO
from tokenworks.errors import BenchError

CAPACITY_ATTAINMENT = 0.9  # DistServe: the highest rate at which 90% of requests meet the SLO
_PERCENTILES = (50, 90, 95, 99)


@dataclass(slots=True, frozen=True)
class Distribution:
    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """Percentiles by linear interpolation between the two nearest ranks (numpy's default)."""
        if len(values) == 0:
            return cls(count=0)
        array = np.asarray(values, dtype=np.float64)
        p50, p90, p95, p99 = (float(v) for v in np.percentile(array, _PERCENTILES))
        return cls(len(array), float(array.mean()), p50, p90, p95, p99, float(array.min()), float(array.max()))

    def to_json(self, prefix: str, unit: str = "_s") -> dict[str, float | int | None]:
        """Flat keys such as `ttft_p50_s`; the count has no unit."""
        return {f"{prefix}_{f.name}" + ("" if f.name == "count" else unit): getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True, frozen=True)
class RequestMetrics:
    """One request's latencies in seconds; None where the request gives no value."""

    ok: bool
    input_tokens: int
    output_tokens: int
    ttft: float | None  # t_first - t_send
    e2e: float | None  # t_last - t_send
    tpot: float | None  # (E2E - TTFT) / (n_out - 1), only when n_out >= 2
    itl: tuple[float, ...]  # one value per token after the first chunk's (token-weighted)


def request_metrics(record: RequestRecord) -> RequestMetrics:
    n_out = output_tokens(record)
    ttft = None if record.first_token is None else record.first_token - record.sent
    e2e = None if record.last_token is None else record.last_token - record.sent
    tpot = (e2e - ttft) / (n_out - 1) if ttft is not None and e2e is not None and n_out >= 2 else None
    return RequestMetrics(record.ok, record.input_tokens or 0, n_out, ttft, e2e, tpot, inter_token_latencies(record))


def output_tokens(record: RequestRecord) -> int:
    """n_out as recorded (usage, else tokenizer); the chunks' own counts if the loader recorded none."""
    return record.output_tokens if record.output_tokens is not None else sum(record.chunk_tokens)


def inter_token_latencies(record: RequestRecord) -> tuple[float, ...]:
    """Each gap between successive content chunks, shared out over the tokens of the later chunk.

    A gap of g seconds before a chunk of k tokens gives k values of g/k, so every token after the
    first chunk's has exactly one value and a request streaming several tokens per chunk weighs as
    much as one streaming single tokens. Chunks counted at zero tokens carry no token; they are
    skipped, and the gap runs from the previous chunk that carried one."""
    arrivals = [(t, k) for t, k in zip(record.chunk_times, record.chunk_tokens, strict=True) if k > 0]
    values: list[float] = []
    for (previous, _), (time, tokens) in pairwise(arrivals):
        values.extend([(time - previous) / tokens] * tokens)
    return tuple(values)


@dataclass(slots=True, frozen=True)
class RunMetrics:
    requests: int  # profiled requests (warmup excluded), ok and failed
    completed: int
    errors: int
    error_rate: float | None
    warmup: int  # warmup requests left out of every figure
    window_start: float | None  # first profiled send
    window_end: float | None  # last completion
    duration: float | None  # W, seconds
    input_tokens: int  # over completed requests
    output_tokens: int
    request_throughput: float | None  # completed / W
    output_throughput: float | None  # tokens/s
    total_throughput: float | None
    devices: float
    device_label: str
    request_throughput_per_device: float | None
    output_throughput_per_device: float | None
    total_throughput_per_device: float | None
    interactivity: float | None  # 1 / median(TPOT), tokens/s/user: the one charts use
    median_interactivity: float | None  # median(1 / TPOT)
    slo: str | None  # the SLO as given; None: every completed request is good
    good_requests: int
    good_output_tokens: int
    goodput_requests: float | None  # good / W
    goodput_tokens: float | None  # good requests' output tokens / W
    slo_attainment: float | None  # good / (completed + errors)
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution

    def to_json(self) -> dict:
        """One flat dict (a row of points.csv): distributions become `ttft_p50_s` and so on."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            data.update(value.to_json(f.name) if isinstance(value, Distribution) else {f.name: value})
        return data


def summarize(
    records: Iterable[RequestRecord], slo: SLO | None = None, devices: float = 1.0, device_label: str = "host"
) -> RunMetrics:
    if devices <= 0:
        raise BenchError(f"devices must be above zero, got {devices}")
    records = list(records)
    profiled = [r for r in records if not r.warmup]
    per_request = [request_metrics(r) for r in profiled]
    done = [m for m in per_request if m.ok]
    good = [m for m in done if slo is None or slo.is_met(m)]
    start, end = window(profiled)
    duration = end - start if start is not None and end is not None else None

    def rate(amount: float) -> float | None:
        return amount / duration if duration else None

    def per_device(value: float | None) -> float | None:
        return None if value is None else value / devices

    tpots = [m.tpot for m in done if m.tpot is not None and m.tpot > 0]
    median_tpot = float(np.median(tpots)) if tpots else None
    input_tokens = sum(m.input_tokens for m in done)
    output_tokens = sum(m.output_tokens for m in done)
    request_throughput, output_throughput = rate(len(done)), rate(output_tokens)
    total_throughput = rate(input_tokens + output_tokens)
    good_output_tokens = sum(m.output_tokens for m in good)
    errors = len(profiled) - len(done)
    return RunMetrics(
        requests=len(profiled),
        completed=len(done),
        errors=errors,
        error_rate=errors / len(profiled) if profiled else None,
        warmup=len(records) - len(profiled),
        window_start=start,
        window_end=end,
        duration=duration,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        request_throughput=request_throughput,
        output_throughput=output_throughput,
        total_throughput=total_throughput,
        devices=devices,
        device_label=device_label,
        request_throughput_per_device=per_device(request_throughput),
        output_throughput_per_device=per_device(output_throughput),
        total_throughput_per_device=per_device(total_throughput),
        interactivity=1 / median_tpot if median_tpot else None,
        median_interactivity=float(np.median([1 / t for t in tpots])) if tpots else None,
        slo=None if slo is None else str(slo),
        good_requests=len(good),
        good_output_tokens=good_output_tokens,
        goodput_requests=rate(len(good)),
        goodput_tokens=rate(good_output_tokens),
        slo_attainment=len(good) / len(profiled) if profiled else None,
        ttft=Distribution.of([m.ttft for m in done if m.ttft is not None]),
        tpot=Distribution.of([m.tpot for m in done if m.tpot is not None]),
        itl=Distribution.of([v for m in done for v in m.itl]),
        e2e=Distribution.of([m.e2e for m in done if m.e2e is not None]),
    )


def window(profiled: Sequence[RequestRecord]) -> tuple[float | None, float | None]:
    """W's edges: the first send, and the last chunk of any profiled request, failed ones included
    (a request that broke mid-stream kept the server busy until its last chunk)."""
    if not profiled:
        return None, None
    ends = [r.last_token for r in profiled if r.last_token is not None]
    return min(r.sent for r in profiled), max(ends) if ends else None


def capacity(points: Iterable[tuple[float, float]], target: float = CAPACITY_ATTAINMENT) -> float | None:
    """The highest request rate whose SLO attainment is at least `target`, from (rate, attainment) results.

    Rates are read in increasing order and the search stops at the first one that misses: a rate
    that passes above a failing one is noise, not capacity. None when the lowest rate already misses."""
    best = None
    for rate, attainment in sorted(points):
        if attainment < target:
            break
        best = rate
    return best


@dataclass(slots=True)
class CapacitySearch:
    capacity: float | None  # the highest passing rate measured; None if `low` already missed
    points: list[tuple[float, float]]  # every (rate, attainment) measured, in order
    bracketed: bool  # False when even the highest rate tried passed: capacity is a lower bound


def find_capacity(
    measure: Callable[[float], float],
    low: float,
    high: float,
    tolerance: float,
    max_steps: int,
    target: float = CAPACITY_ATTAINMENT,
) -> CapacitySearch:
    """Search request rates for capacity, calling `measure(rate) -> attainment` at most `max_steps` times.

    Measure `low` (if it misses there is no capacity), then `high`, doubling it while it passes to
    bracket the capacity, then bisect until the passing and failing rates are within `tolerance`."""
    if not 0 < low < high:
        raise BenchError(f"capacity search needs 0 < low < high, got low={low}, high={high}")
    if tolerance <= 0 or max_steps < 2:
        raise BenchError(f"capacity search needs tolerance > 0 and max_steps >= 2, got {tolerance}, {max_steps}")
    points: list[tuple[float, float]] = []

    def passes(rate: float) -> bool:
        attainment = measure(rate)
        points.append((rate, attainment))
        return attainment >= target

    if not passes(low):
        return CapacitySearch(None, points, bracketed=True)
    passing, failing = low, None
    while len(points) < max_steps and failing is None:
        if passes(high):
            passing, high = high, high * 2
        else:
            failing = high
    while failing is not None and len(points) < max_steps and failing - passing > tolerance:
        middle = (passing + failing) / 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return CapacitySearch(passing, points, bracketed=failing is not None)
