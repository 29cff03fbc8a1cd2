"""The host's speed over time, measured at concurrency 1 and given to every simulated step.

On a shared host a core's speed wanders over seconds. At concurrency 1, where every request's
steps are alike, a request's time a token ran from 0.63 to 1.60 times the median request's (the
requests' spread 4-27% of the median, session 25's sweeps), where its single tokens, were they
independent, would have put each request's mean within 1-8%: tokens in a row are slow together
(docs/benchmarks.md, Plan, session 26). A simulation at one speed throughout has no slow
stretches, and so none of the tails they make at every load. So the simulated clock is cut into
windows as long as one measured request's decode at concurrency 1, and each window's steps take
a factor dealt from the measured ones (draws.py), a request's TPOT over the requests' mean: the
host's speed averaged over a long run stays the one the calibration fitted. A deck per replica:
each worker's core is slow at its own times.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from tokenworks.bench.records import RequestRecord
from tokenworks.plan.draws import Draws


class HostSpeed:
    """`factor(now)`: how much longer than the profile's a step begun at `now` takes."""

    def __init__(self, factors: Sequence[float], window: float, seed: int = 0) -> None:
        if window <= 0:
            raise ValueError("a speed window must be longer than 0 s")
        self.window = window
        self._draws = Draws(factors, seed=seed)
        self._factors: list[float] = []  # of windows 0, 1, 2, ...: dealt in order, so a run repeats exactly

    def factor(self, now: float) -> float:
        index = int(now // self.window)
        while len(self._factors) <= index:
            self._factors.append(self._draws())
        return self._factors[index]


def speed_factors(tpots: Sequence[float]) -> tuple[float, ...]:
    """Each request's TPOT over the requests' mean TPOT."""
    if not tpots or min(tpots) <= 0:
        return ()
    mean = sum(tpots) / len(tpots)
    return tuple(t / mean for t in tpots)


def measured_speed(records: Sequence[RequestRecord]) -> tuple[tuple[float, ...], float]:
    """The factors and the window (seconds) from the records of a point at concurrency 1, in
    their order; ((), 0.0) when none decoded."""
    # (A request whose tokens all came in one chunk shows no decode to read a speed from.)
    decoding = [r for r in records if not r.warmup and r.ok and r.first_token is not None and r.last_token is not None
                and r.last_token > r.first_token and (r.output_tokens or 0) > 1]  # fmt: skip
    if not decoding:
        return (), 0.0
    durations = [r.last_token - r.first_token for r in decoding]
    factors = speed_factors([d / (r.output_tokens - 1) for d, r in zip(durations, decoding, strict=True)])
    return factors, statistics.median(durations)
