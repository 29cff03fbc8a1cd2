"""What the router learns about each worker from the requests it sends there.

`LinearEstimate` fits y = a + b * x by least squares over recent samples, each older sample
weighing `decay` times the next one, so a worker's figures follow it as its load or its
neighbours change. The `kv` policy keeps two per worker:
- time to first token against the prefill tokens ahead of a request (its own uncached ones and
  those of the worker's requests still waiting for their first token): a = the fixed cost of
  a turn, b = seconds per prefill token, so 1/b is the worker's prefill rate;
- time per output token against the requests decoding on it: how much each more one slows
  all of them (the decode guard).
Until it has MIN_SAMPLES samples an estimate answers with what the caller gives instead: the
other workers' figures (a new worker is taken to be like its peers), else a prior that is the
same for every worker, so no worker is preferred for what the router has not yet seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SAMPLES = 4


@dataclass(slots=True)
class LinearEstimate:
    prior_a: float
    prior_b: float
    decay: float = 0.97
    samples: int = 0
    a: float = field(init=False)  # the fitted line, refitted at each sample (a decision only reads it)
    b: float = field(init=False)
    _w: float = 0.0  # decayed sums: weight, x, y, x*x, x*y
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0

    def __post_init__(self) -> None:
        self.a, self.b = self.prior_a, self.prior_b

    def add(self, x: float, y: float) -> None:
        d = self.decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + x
        self._y = self._y * d + y
        self._xx = self._xx * d + x * x
        self._xy = self._xy * d + x * y
        self.samples += 1
        if self.learnt:
            self.a, self.b = self._fit()

    @property
    def learnt(self) -> bool:
        return self.samples >= MIN_SAMPLES

    @property
    def coefficients(self) -> tuple[float, float]:
        """(a, b): the fitted line, or the prior until there are MIN_SAMPLES samples."""
        return self.a, self.b

    def _fit(self) -> tuple[float, float]:
        """(a, b), neither negative: a line through the samples, or through the origin when their
        x hardly varies (every request the same length)."""
        w, x, y = self._w, self._x, self._y
        spread = w * self._xx - x * x
        if spread > 1e-9 * max(1.0, w * self._xx):
            b = max(0.0, (w * self._xy - x * y) / spread)
            return max(0.0, (y - b * x) / w), b
        return 0.0, (y / x if x > 0 else self.prior_b)

    def predict(self, x: float, instead: tuple[float, float] | None = None) -> float:
        """a + b * x, with `instead` as (a, b) while this estimate has too few samples."""
        if instead is not None and self.samples < MIN_SAMPLES:
            return instead[0] + instead[1] * x
        return self.a + self.b * x


def pooled(estimates: list[LinearEstimate]) -> tuple[float, float] | None:
    """The mean coefficients of the estimates that have learnt, or None if none has."""
    learnt = [(estimate.a, estimate.b) for estimate in estimates if estimate.samples >= MIN_SAMPLES]
    if not learnt:
        return None
    return sum(a for a, _ in learnt) / len(learnt), sum(b for _, b in learnt) / len(learnt)
