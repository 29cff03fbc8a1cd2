"""The simulated clock: the time every simulated component reads instead of the machine's.

The engine's scheduler and the router's policies take a clock function (`time.monotonic` by
default); the simulator hands each of them the same `SimClock`, which only moves when the event
loop says so. Nothing reads the machine's time while a simulation runs, so a run is exactly
reproducible and runs as fast as the Python around it allows.
"""

from __future__ import annotations


class SimClock:
    """Seconds since the simulated run's origin; callable, so it stands in for `time.monotonic`."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, moment: float) -> None:
        if moment < self.now:
            raise ValueError(f"the simulated clock cannot go back from {self.now} to {moment}")
        self.now = moment
