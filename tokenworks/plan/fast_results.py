"""A fast-mode run's figures: metrics.md's definitions on arrays, or the bench's records.

`summarize_fast` computes what a fleet search compares (TTFT, TPOT and E2E percentiles,
throughput over the window W, SLO attainment) with numpy over millions of requests, each formula
bench/metrics.py's. `records` turns a run into the bench's `RequestRecord`s, so `plan simulate
--mode fast` writes the same results directory as the exact mode; the fast mode knows each
request's first and last token, not the times between, so a record has two chunks, the first
token and then the rest: its ITL values are its mean gap (its TPOT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenworks.bench.metrics import Distribution
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.slo import SLO
from tokenworks.plan.fast import FastRun


@dataclass(frozen=True, slots=True)
class FastSummary:
    requests: int  # measured
    window: float  # W: the first measured send to the last measured answer
    ttft: Distribution
    tpot: Distribution
    e2e: Distribution
    output_throughput: float
    total_throughput: float
    request_throughput: float
    interactivity: float | None  # 1 / median(TPOT)
    slo_attainment: float | None  # good / requests (None without an SLO)
    prefix_hit_rate: float | None
    utilisation: float  # the replica's busy time over its simulated time


def latencies(run: FastRun) -> tuple[np.ndarray, np.ndarray, np.ndarray, slice]:
    """TTFT, TPOT (nan where n_out < 2) and E2E of every request, and the measured ones' slice."""
    ttft = run.first_token - run.sent
    e2e = run.last_token - run.sent
    outputs = run.requests.output_tokens[: len(run.sent)]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outputs >= 2, (e2e - ttft) / (outputs - 1), np.nan)
    return ttft, tpot, e2e, slice(run.warmup, len(run.sent))


def summarize_fast(run: FastRun, slo: SLO | None = None) -> FastSummary:
    ttft, tpot, e2e, measured = latencies(run)
    ttft, tpot, e2e = ttft[measured], tpot[measured], e2e[measured]
    requests = run.requests
    inputs = requests.input_tokens[measured].sum()
    outputs = requests.output_tokens[measured].sum()
    window = float(np.max(run.last_token[measured]) - np.min(run.sent[measured]))
    tpots = tpot[~np.isnan(tpot)]
    median_tpot = float(np.median(tpots)) if len(tpots) else None
    attainment = None
    if slo is not None:
        good = np.ones(len(ttft), dtype=bool)
        if slo.ttft is not None:
            good &= ttft <= slo.ttft
        if slo.tpot is not None:
            good &= np.isnan(tpot) | (tpot <= slo.tpot)
        if slo.e2e is not None:
            good &= e2e <= slo.e2e
        attainment = float(good.mean())
    cached = requests.cached_tokens[measured].sum()
    return FastSummary(
        requests=len(ttft), window=window, ttft=Distribution.of(ttft), tpot=Distribution.of(tpots),
        e2e=Distribution.of(e2e), output_throughput=outputs / window, total_throughput=(inputs + outputs) / window,
        request_throughput=len(ttft) / window, interactivity=1 / median_tpot if median_tpot else None,
        slo_attainment=attainment, prefix_hit_rate=float(cached / inputs) if inputs else None,
        utilisation=run.busy_seconds / run.end if run.end > 0 else 0.0,
    )  # fmt: skip


def records(run: FastRun) -> list[RequestRecord]:
    """The bench's records of a run (warmup flagged), every token count from the run itself."""
    requests = run.requests
    out = []
    for index in range(len(run.sent)):
        first, last = float(run.first_token[index]), float(run.last_token[index])
        outputs = int(requests.output_tokens[index])
        times, tokens = ([first, last], [1, outputs - 1]) if outputs > 1 else ([first], [1])
        out.append(RequestRecord(
            index=index, warmup=index < run.warmup, intended_send=None, sent=float(run.sent[index]),
            first_token=first, last_token=last, chunk_times=times, chunk_tokens=tokens,
            input_tokens=int(requests.input_tokens[index]), output_tokens=outputs, token_source="usage",
            requested_output_tokens=outputs, http_status=200, cached_tokens=int(requests.cached_tokens[index]),
        ))  # fmt: skip
    return out
