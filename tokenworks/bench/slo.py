"""Service-level objectives: the latency bounds a request must meet to count towards goodput.

`SLO.parse("ttft=200ms,tpot=50ms,e2e=5s")` reads the `--slo` option; only the bounds given count.
Bounds are held in seconds, the unit of every time in a `RequestRecord`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from tokenworks.errors import BenchError

KEYS = ("ttft", "tpot", "e2e")
# Durations are converted in decimal arithmetic, so "0.117ms" and "117us" are the same float.
_PER_SECOND = {"us": Decimal(10**6), "ms": Decimal(1000), "s": Decimal(1)}
_DURATION = re.compile(r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)")


class RequestLatencies(Protocol):
    """What an SLO is checked against: one request's latencies in seconds (see metrics.RequestMetrics)."""

    @property
    def ok(self) -> bool: ...
    @property
    def ttft(self) -> float | None: ...
    @property
    def tpot(self) -> float | None: ...
    @property
    def e2e(self) -> float | None: ...


@dataclass(slots=True, frozen=True)
class SLO:
    ttft: float | None = None  # seconds; None: not part of the objective
    tpot: float | None = None
    e2e: float | None = None

    @classmethod
    def parse(cls, spec: str) -> SLO:
        bounds: dict[str, float] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, value = (s.strip().lower() for s in part.partition("="))
            if not sep:
                raise BenchError(f"bad SLO part '{part}': write key=duration, e.g. ttft=200ms")
            if key not in KEYS:
                raise BenchError(f"unknown SLO key '{key}' in '{part}'; use ttft, tpot or e2e")
            if key in bounds:
                raise BenchError(f"SLO key '{key}' is given twice in '{spec}'")
            bounds[key] = _parse_duration(value, part)
        if not bounds:
            raise BenchError(f"empty SLO '{spec}': give at least one bound, e.g. ttft=200ms,tpot=50ms")
        return cls(**bounds)

    def is_met(self, request: RequestLatencies) -> bool:
        """Whether a request is good: it succeeded and every bound given holds.

        A missing TTFT or E2E (no content, no end) fails its bound. A missing TPOT (fewer than
        two output tokens) has no time between tokens to exceed, so it meets its bound."""
        if not request.ok:
            return False
        if self.ttft is not None and (request.ttft is None or request.ttft > self.ttft):
            return False
        if self.tpot is not None and request.tpot is not None and request.tpot > self.tpot:
            return False
        return self.e2e is None or (request.e2e is not None and request.e2e <= self.e2e)

    def to_json(self) -> dict[str, float | None]:
        return {f"slo_{key}_s": getattr(self, key) for key in KEYS}

    def __str__(self) -> str:
        return ",".join(
            f"{key}={_format_duration(getattr(self, key))}" for key in KEYS if getattr(self, key) is not None
        )


def _parse_duration(text: str, part: str) -> float:
    match = _DURATION.fullmatch(text)
    if match is None:
        raise BenchError(f"bad duration '{text}' in '{part}': give a number and a unit, e.g. 200ms")
    unit = match["unit"]
    if not unit:
        raise BenchError(f"bad duration '{text}' in '{part}': give a unit, e.g. {match['value']}ms")
    if unit not in _PER_SECOND:
        raise BenchError(f"bad unit '{unit}' in '{part}': use us, ms or s")
    seconds = float(Decimal(match["value"]) / _PER_SECOND[unit])
    if seconds <= 0:
        raise BenchError(f"bad duration '{text}' in '{part}': a bound must be above zero")
    return seconds


def _format_duration(seconds: float) -> str:
    """In the largest unit that keeps the number at least 1, from the float's shortest decimal form,
    which reads back as the same float."""
    exact = Decimal(repr(seconds))
    unit = next((u for u in ("s", "ms") if exact * _PER_SECOND[u] >= 1), "us")
    return format((exact * _PER_SECOND[unit]).normalize(), "f") + unit
