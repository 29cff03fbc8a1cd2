"""When the fast mode's requests reach the engine: bench/loadgen.py's rules, as request indices.

Requests are 0..n-1 in schedule order, the first `warmup` of them warmup. Warmup goes first,
closed loop at min(warmup, concurrency) wide; the measured phase starts when the last warmup
answer is back: closed loop (each answer sends the next request), or open loop at the bench's
own seeded schedule (`arrival_times`), optionally capped at `concurrency` in flight (later
requests wait at the client for a slot). The engine asks `next_time` and `pop`s what is due, and
tells `answered` when a request's last token leaves a step; the delays outside the engine (the
way in, the way out) are added here, as the exact mode's Simulation adds them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from tokenworks.bench.loadgen import LoadOptions, arrival_times
from tokenworks.errors import PlanError


@dataclass(frozen=True, slots=True)
class FastLoad:
    num_requests: int  # measured, warmup not included
    concurrency: int | None = None  # closed loop, or the open loop's cap
    request_rate: float | None = None  # open loop
    arrival: str = "poisson"
    burstiness: float = 1.0
    warmup: int = 0
    seed: int = 0
    arrival_delay: float = 0.0  # seconds from a send to the engine
    delivery_delay: float = 0.0  # from a step's end to the client

    @classmethod
    def of(cls, load: LoadOptions) -> FastLoad:
        """The bench's load options (a count of requests, not a duration)."""
        if load.num_requests is None:
            raise PlanError("the fast mode needs a number of requests (--num-requests), not a duration")
        return cls(
            num_requests=load.num_requests, concurrency=load.concurrency, request_rate=load.request_rate,
            arrival=load.arrival, burstiness=load.burstiness, warmup=load.warmup_requests, seed=load.seed,
        )  # fmt: skip

    def validate(self) -> None:
        if self.num_requests < 1:
            raise PlanError(f"the fast mode needs at least one request, got {self.num_requests}")
        if self.concurrency is None and self.request_rate is None:
            raise PlanError("give a concurrency (closed loop) or a request rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise PlanError(f"concurrency must be at least 1, got {self.concurrency}")

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None and math.isfinite(self.request_rate)

    def offsets(self) -> list[float]:
        """The measured phase's send times from its start (the bench's schedule, same seed)."""
        return arrival_times(self.request_rate, self.num_requests, self.arrival, self.burstiness,
                             random.Random(self.seed))  # fmt: skip


class Sends:
    """The load's state: what is due at the engine (in time order), who may send next."""

    def __init__(self, load: FastLoad, offsets: list[float] | None = None) -> None:
        load.validate()
        self.load = load
        self.total = load.warmup + load.num_requests
        self.sent = [0.0] * self.total  # client send time of each request
        self.due: deque[tuple[float, int]] = deque()  # (engine arrival time, request)
        self.measured_start = 0.0
        self._next = 0  # the next request index to send
        self._warmup_left = load.warmup  # warmup answers still to come
        self._offsets = offsets if offsets is not None else (load.offsets() if load.open_loop else None)
        self._slots = load.concurrency  # open loop's free slots (None: no cap)
        self._freed = 0.0  # when the last slot freed (a capped open loop's queued request goes then)
        if load.warmup:
            for _ in range(min(load.warmup, load.concurrency or load.warmup)):
                self._send(0.0)
        else:
            self._measured(0.0)

    @property
    def next_time(self) -> float:
        return self.due[0][0] if self.due else math.inf

    def _send(self, moment: float) -> None:
        index = self._next
        self._next += 1
        self.sent[index] = moment
        self.due.append((moment + self.load.arrival_delay, index))

    def _measured(self, moment: float) -> None:
        self.measured_start = moment
        load = self.load
        if self._offsets is None:  # closed loop
            for _ in range(min(load.concurrency, load.num_requests)):
                self._send(moment)
            return
        # Open loop: every scheduled send up to the cap now; the rest as slots free.
        while self._next < self.total and (self._slots is None or self._slots > 0):
            if self._slots is not None:
                self._slots -= 1
            self._scheduled()

    def _scheduled(self) -> None:
        """Send the next request at its scheduled time, or now if a freed slot let it wait."""
        offset = self.measured_start + self._offsets[self._next - self.load.warmup]
        self._send(max(offset, self._freed))

    def answered(self, index: int, moment: float) -> None:
        """Request `index` had its last token at `moment` (engine time): what follows it goes."""
        back = moment + self.load.delivery_delay
        if index < self.load.warmup:
            self._warmup_left -= 1
            if self._next < self.load.warmup:
                self._send(back)
            elif self._warmup_left == 0:
                self._measured(back)
            return
        if self._offsets is None:
            if self._next < self.total:
                self._send(back)
        elif self._slots is not None and self._next < self.total:
            self._freed = back
            self._scheduled()  # the slot goes straight to the next request, at its time or now
