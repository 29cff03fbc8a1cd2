"""Validity flags: what makes a run's figures doubtful, shown with every result.

Each check looks at the records (and the energy reading) for one way a benchmark can measure
something other than what it meant to: outputs of the wrong length, token counts that disagree,
a load generator that fell behind its schedule, failed requests, a server falling ever further
behind, or energy samples too sparse to trust.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from tokenworks.bench.energy import EnergyReading
from tokenworks.bench.metrics import RunMetrics, output_tokens, request_metrics
from tokenworks.bench.records import RequestRecord

Severity = Literal["warning", "error"]


@dataclass(slots=True, frozen=True)
class Flag:
    code: str
    severity: Severity
    message: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class Thresholds:
    tokenizer_tolerance: float = 0.02  # summed |usage - tokenizer| over summed usage
    lag_seconds: float = 0.010  # schedule lag p99 allowed: the larger of this and ...
    lag_fraction: float = 0.05  # ... this share of the mean time between intended sends
    error_rate: float = 0.05  # above it, errors make the run an error rather than a warning
    saturation_ratio: float = 2.0  # second half's median TTFT over the first half's
    saturation_seconds: float = 0.010  # and at least this much larger, so tiny TTFTs do not flag on noise
    saturation_min_requests: int = 8
    gap_periods: float = 3.0  # energy samples further apart than this many sampling periods


def validity_flags(
    records: Sequence[RequestRecord],
    metrics: RunMetrics,
    energy: EnergyReading | None = None,
    thresholds: Thresholds | None = None,
) -> list[Flag]:
    limits = thresholds or Thresholds()
    profiled = [r for r in records if not r.warmup]
    checks = (
        _output_length(profiled),
        _usage_vs_tokenizer(profiled, limits),
        _schedule_lag(profiled, limits),
        _errors(profiled, metrics, limits),
        _saturation(profiled, limits),
        *(_energy(energy, limits) if energy is not None else ()),
    )
    return [flag for flag in checks if flag is not None]


def _output_length(profiled: list[RequestRecord]) -> Flag | None:
    """Requests that asked for max_tokens should receive exactly that many: the workload enforces its
    output lengths with ignore_eos/min_tokens, so a shortfall means the server ignored them."""
    asked = [r for r in profiled if r.ok and r.requested_output_tokens is not None]
    wrong = [r for r in asked if output_tokens(r) != r.requested_output_tokens]
    if not wrong:
        return None
    first = wrong[0]
    return Flag(
        "output_length_mismatch",
        "warning",
        f"{len(wrong)} of {len(asked)} requests received a different number of output tokens than asked "
        f"(request {first.index}: asked {first.requested_output_tokens}, received {output_tokens(first)}); "
        "the server may ignore ignore_eos/min_tokens, so the workload's output lengths were not kept",
    )


def _usage_vs_tokenizer(profiled: list[RequestRecord], limits: Thresholds) -> Flag | None:
    pairs = [
        (r.output_tokens, r.tokenizer_output_tokens)
        for r in profiled
        if r.ok and r.token_source == "usage" and r.output_tokens is not None and r.tokenizer_output_tokens is not None
    ]
    usage = sum(u for u, _ in pairs)
    if not usage:
        return None
    disagreement = sum(abs(u - t) for u, t in pairs) / usage
    if disagreement <= limits.tokenizer_tolerance:
        return None
    return Flag(
        "usage_tokenizer_mismatch",
        "warning",
        f"the server's usage and the local tokenizer disagree on {disagreement:.1%} of output tokens "
        f"(tolerance {limits.tokenizer_tolerance:.0%}); the tokenizer may not be the model's, or the model emits token sequences the tokenizer would split differently (usual for small or untrained models)",
    )


def _schedule_lag(profiled: list[RequestRecord], limits: Thresholds) -> Flag | None:
    scheduled = sorted((r for r in profiled if r.intended_send is not None), key=lambda r: r.intended_send)
    if len(scheduled) < 2:
        return None
    lags = np.array([r.sent - r.intended_send for r in scheduled])
    mean_gap = (scheduled[-1].intended_send - scheduled[0].intended_send) / (len(scheduled) - 1)
    allowed = max(limits.lag_seconds, limits.lag_fraction * mean_gap)
    p99 = float(np.percentile(lags, 99))
    if p99 <= allowed:
        return None
    return Flag(
        "schedule_lag",
        "warning",
        f"the load generator sent late: p99 lag {p99 * 1e3:.1f} ms behind the arrival schedule "
        f"(allowed {allowed * 1e3:.1f} ms), so the offered load was lower than asked; "
        "lower the rate or give the load generator a core of its own",
    )


def _errors(profiled: list[RequestRecord], metrics: RunMetrics, limits: Thresholds) -> Flag | None:
    if not metrics.errors:
        return None
    common, count = Counter(r.error or "unknown error" for r in profiled if not r.ok).most_common(1)[0]
    return Flag(
        "errors",
        "error" if metrics.error_rate > limits.error_rate else "warning",
        f"{metrics.errors} of {metrics.requests} requests failed ({metrics.error_rate:.1%}); "
        f"most often ({count}x): {common}",
    )


def _saturation(profiled: list[RequestRecord], limits: Thresholds) -> Flag | None:
    """The server falls behind when requests queue longer and longer: split the completed requests by
    send time into halves and compare their median TTFTs."""
    timed = sorted((r.sent, m.ttft) for r in profiled if (m := request_metrics(r)).ok and m.ttft is not None)
    if len(timed) < limits.saturation_min_requests:
        return None
    half = len(timed) // 2
    early = float(np.median([ttft for _, ttft in timed[:half]]))
    late = float(np.median([ttft for _, ttft in timed[half:]]))
    if late < limits.saturation_ratio * early or late - early < limits.saturation_seconds:
        return None
    return Flag(
        "saturation",
        "warning",
        f"the queue grew through the run: median TTFT rose from {early * 1e3:.1f} ms in the first half "
        f"to {late * 1e3:.1f} ms in the second; the server is past capacity at this load",
    )


def _energy(energy: EnergyReading, limits: Thresholds) -> tuple[Flag | None, Flag | None]:
    gaps = None
    if energy.max_gap_seconds > limits.gap_periods * energy.interval:
        gaps = Flag(
            "energy_gaps",
            "warning",
            f"energy samples were up to {energy.max_gap_seconds:.2f} s apart (sampling every "
            f"{energy.interval:.2f} s); the meter's thread was starved, so the energy is coarse",
        )
    estimated = None
    if energy.label == "estimated":
        estimated = Flag(
            "energy_estimated",
            "warning",
            "energy is estimated from CPU utilisation x TDP, not measured; no GPU or RAPL counter was readable",
        )
    return gaps, estimated
