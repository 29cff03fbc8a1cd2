"""What the router learns about each worker from the requests it sends there.

`LinearEstimate` fits y = a + b * x by least squares over recent samples, each older sample
weighing `decay` times the next one, so a worker's figures follow it as its load or its
neighbours change. The `kv` policy keeps two per worker:
- time to first token against the prefill tokens ahead of a request (its own uncached ones and
  those of the worker's requests still waiting for their first token): a = the fixed cost of
  a turn, b = seconds per prefill token, so 1/b is the worker's prefill rate;
- time per output token against the requests decoding on it: how much each more one slows
  all of them (the decode guard).

A worker's own fit is trusted as far as it has recent samples: `blended` mixes it with its
peers' (the fleet's workers are most often alike), own weight n / (n + SHRINK_SAMPLES) where
n is its samples' decayed weight, halved for every HALF_LIFE_S without a new one. So a worker
whose first answers were slow (an engine warming up) is not written off for good: the policy
would never send it the requests that would show it is fast now. A worker's very first sample
is not fitted at all, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHRINK_SAMPLES = 32.0
HALF_LIFE_S = 30.0


@dataclass(slots=True)
class LinearEstimate:
    prior_a: float
    prior_b: float
    decay: float = 0.97
    samples: int = 0
    a: float = field(init=False)  # the worker's own fit (its prior before any)
    b: float = field(init=False)
    last_sample: float = 0.0  # time.monotonic() of the last sample fitted
    _w: float = 0.0  # decayed sums: weight, x, y, x*x, x*y
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0

    def __post_init__(self) -> None:
        self.a, self.b = self.prior_a, self.prior_b

    def add(self, x: float, y: float, now: float) -> None:
        self.samples += 1
        if self.samples == 1:
            return  # the first answer pays the engine's warm-up
        d = self.decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + x
        self._y = self._y * d + y
        self._xx = self._xx * d + x * x
        self._xy = self._xy * d + x * y
        self.last_sample = now
        self.a, self.b = self._fit()

    def _fit(self) -> tuple[float, float]:
        """(a, b), neither negative: a line through the samples, or through the origin when their
        x hardly varies (every request the same length)."""
        w, x, y = self._w, self._x, self._y
        spread = w * self._xx - x * x
        if spread > 1e-9 * max(1.0, w * self._xx):
            b = max(0.0, (w * self._xy - x * y) / spread)
            return max(0.0, (y - b * x) / w), b
        return 0.0, (y / x if x > 0 else self.prior_b)

    def weight(self, now: float) -> float:
        """How much its own samples count now: their decayed weight, halved per HALF_LIFE_S unfed."""
        return self._w * 0.5 ** ((now - self.last_sample) / HALF_LIFE_S) if self._w else 0.0

    def blended(self, peers: tuple[float, float] | None, now: float) -> tuple[float, float]:
        """(a, b): its own fit, mixed with `peers` (else its prior) as far as its samples fall short."""
        own = self.weight(now)
        a, b = peers if peers is not None else (self.prior_a, self.prior_b)
        if own == 0.0:
            return a, b
        trust = own / (own + SHRINK_SAMPLES)
        return trust * self.a + (1 - trust) * a, trust * self.b + (1 - trust) * b


def pooled(estimates: list[LinearEstimate], now: float) -> tuple[float, float] | None:
    """The estimates' own fits averaged by their weight now, or None if none has a sample."""
    total = a = b = 0.0
    for estimate in estimates:
        weight = estimate.weight(now)
        total += weight
        a += weight * estimate.a
        b += weight * estimate.b
    return (a / total, b / total) if total > 0 else None
