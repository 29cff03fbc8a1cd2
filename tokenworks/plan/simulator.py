"""The discrete-event loop: a load sending requests to replicas (behind the router's policy when
there are several), on one simulated clock.

Events are step ends and the load's timed sends, taken in time order. At each moment: the steps
that end now are applied first (tokens, finished requests, which may make a closed loop send its
next request now, and the KV events, fed to the router's index), then the load's sends due now,
and only then does each idle replica with work schedule its next step. So a request that arrives
at the moment a step ends joins the next step, as a request the engine core finds in its input
queue between two steps does live.

Every request's `RequestRecord` is filled as the benchmark's client fills it (send, first token,
every token's time, usage counts), so bench/metrics.py derives every figure from them unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tokenworks.engine.request import Request
from tokenworks.plan.clock import SimClock
from tokenworks.plan.load import Send
from tokenworks.plan.replica import Replica
from tokenworks.plan.routing import SimRouter
from tokenworks.router.flight import Flight

_STEP_END, _TIMED = 0, 1  # at one moment, steps end before the load sends


class Load(Protocol):
    records: list
    measured_start: float

    def start(self, sender: Simulation) -> None: ...


@dataclass(slots=True)
class _InFlight:
    send: Send
    replica: int
    flight: Flight | None


@dataclass(slots=True)
class SimulationStats:
    steps: int = 0
    busy_seconds: list[float] = field(default_factory=list)  # per replica
    preemptions: int = 0
    prompt_tokens: int = 0  # of answered requests, warmup left out (as from every figure)
    cached_tokens: int = 0
    route_reasons: dict[str, int] = field(default_factory=dict)
    end: float = 0.0  # the simulated time of the last event
    wall_seconds: float = 0.0  # what simulating it took

    @property
    def prefix_hit_rate(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


class Simulation:
    """`arrival_delay` is the time from a request's send to its engine having it (HTTP, the
    server's tokenization, the engine client), `delivery_delay` from a token's step end to the
    client reading it (detokenization, the stream): what the step times leave out of a live
    request's latency, 0 unless given."""

    def __init__(
        self, replicas: list[Replica], clock: SimClock, router: SimRouter | None = None,
        arrival_delay: float = 0.0, delivery_delay: float = 0.0,
    ) -> None:  # fmt: skip
        if len(replicas) > 1 and router is None:
            raise ValueError("several replicas need a router to choose between them")
        if arrival_delay < 0 or delivery_delay < 0:
            raise ValueError("delays cannot be negative")
        self.replicas, self.clock, self.router = replicas, clock, router
        self.arrival_delay, self.delivery_delay = arrival_delay, delivery_delay
        self._events: list[tuple[float, int, int, object]] = []
        self._order = itertools.count()
        self._requests: dict[str, _InFlight] = {}
        self._ids = itertools.count()
        self._ready: set[int] = set()  # replicas to look at before time moves on
        self.stats = SimulationStats()

    # ---- what the load calls (load.Sender) ----------------------------------------------------

    def now(self) -> float:
        return self.clock.now

    def call_at(self, moment: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (moment, _TIMED, next(self._order), action))

    def submit(self, send: Send) -> None:
        """The request leaves the client now; it reaches the engine after the arrival delay."""
        send.record.sent = self.clock.now
        if self.arrival_delay:
            self.call_at(self.clock.now + self.arrival_delay, lambda: self._arrive(send))
        else:
            self._arrive(send)

    def _arrive(self, send: Send) -> None:
        """The request reaches the server now: routed, then queued in its replica's scheduler."""
        now = self.clock.now
        record = send.record
        flight, replica = None, 0
        if self.router is not None:
            session = send.spec.session if send.spec is not None else None
            replica, flight = self.router.route(send.prompt_ids, len(send.output_ids), session)
        request_id = str(next(self._ids))
        try:
            self.replicas[replica].add(request_id, send.prompt_ids, send.output_ids, now)
        except ValueError as error:  # the server's 400: the record fails at once, as the client records it
            record.status, record.error, record.http_status = "error", str(error), 400
            record.last_token = now + self.delivery_delay
            if flight is not None:
                flight.abandoned()
            self._deliver(send)
            return
        send.replica = replica
        self._requests[request_id] = _InFlight(send, replica, flight)
        self._ready.add(replica)

    # ---- the loop --------------------------------------------------------------------------------

    def run(self, load: Load) -> SimulationStats:
        began = time.perf_counter()
        load.start(self)
        self._start_steps()
        events, clock = self._events, self.clock
        while events:
            moment = events[0][0]
            clock.advance_to(moment)
            while events and events[0][0] == moment:
                _, kind, _, payload = heapq.heappop(events)
                if kind == _STEP_END:
                    self._end_step(payload)
                else:
                    payload()
            self._start_steps()
        stats = self.stats
        stats.end = clock.now
        stats.wall_seconds = time.perf_counter() - began
        stats.busy_seconds = [replica.busy_seconds for replica in self.replicas]
        stats.steps = sum(replica.steps for replica in self.replicas)
        stats.preemptions = sum(replica.scheduler.num_preemptions for replica in self.replicas)
        if self.router is not None:
            stats.route_reasons = dict(self.router.reasons)
        return stats

    def _start_steps(self) -> None:
        for position in sorted(self._ready):
            replica = self.replicas[position]
            if replica.busy_until is None and replica.has_work():
                end = replica.start_step()
                if end is not None:
                    heapq.heappush(self._events, (end, _STEP_END, next(self._order), position))
        self._ready.clear()

    def _end_step(self, position: int) -> None:
        replica = self.replicas[position]
        first, finished = replica.end_step()
        self._ready.add(position)
        router = self.router
        for request in first:
            entry = self._requests[request.request_id]
            if entry.flight is not None:
                router.first_token(entry.flight)
        if router is not None and router.records_kv_events:
            events = replica.take_kv_events()
            if events:
                router.kv_events(position, events)
        for request in finished:
            self._answered(self._requests.pop(request.request_id), request)

    def _answered(self, entry: _InFlight, request: Request) -> None:
        record, times, delay = entry.send.record, request.times, self.delivery_delay
        # One streamed chunk per token, as the server streams, each read `delay` after its step.
        record.chunk_times = [moment + delay for moment in times.tokens] if delay else times.tokens
        record.first_token, record.last_token = record.chunk_times[0], record.chunk_times[-1]
        record.chunk_tokens = [1] * len(times.tokens)
        record.input_tokens = request.num_prompt_tokens
        record.output_tokens = len(request.output_token_ids)
        record.cached_tokens = request.num_cached_tokens
        record.token_source = "usage"
        record.http_status = 200
        if not record.warmup:
            self.stats.prompt_tokens += request.num_prompt_tokens
            self.stats.cached_tokens += request.num_cached_tokens
        if entry.flight is not None:
            self.router.finished(entry.flight, request.num_prompt_tokens, request.num_cached_tokens,
                                 len(request.output_token_ids))  # fmt: skip
        self._deliver(entry.send)

    def _deliver(self, send: Send) -> None:
        """The client has the whole answer (after the delivery delay): what follows it may go."""
        if send.then is None:
            return
        if self.delivery_delay:
            self.call_at(self.clock.now + self.delivery_delay, lambda: send.then(send))
        else:
            send.then(send)
