"""Per-request times measured on a live server, drawn again for each simulated request.

A constant way in keeps a simulated closed loop in lockstep: every request of a point takes
the same time, its clients end in one step and send together, and no arrival ever lands in the
middle of another request's step, where a live one does and waits for it. Drawing each
request's time from what was measured (calibrate.py reads them from the concurrency-1 point's
records) gives the simulation the spread the live requests had, and their tails.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class Draws:
    """Each call: the next of `samples` dealt from a shuffled deck, shuffled again when it runs out,
    by a generator seeded with `seed` (so a simulation is exactly reproducible). A deck rather
    than independent draws: any run of len(samples) calls gives back the measured set itself, so
    a simulated point as long as the measured one has its spread, not a resampling's."""

    def __init__(self, samples: Sequence[float], seed: int = 0) -> None:
        if not samples:
            raise ValueError("nothing to draw from")
        if min(samples) < 0:
            raise ValueError("measured times cannot be negative")
        self.samples = tuple(samples)
        self._random = random.Random(seed)
        self._deck: list[float] = []

    def __call__(self) -> float:
        if not self._deck:
            self._deck = list(self.samples)
            self._random.shuffle(self._deck)
        return self._deck.pop()
