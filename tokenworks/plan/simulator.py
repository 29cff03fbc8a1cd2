"""The discrete-event loop: a load sending requests to replicas (behind the router's policy when
there are several), on one simulated clock.

Events are step ends and the load's timed sends, taken in time order. At each moment: the steps
that end now are applied first (tokens, finished requests, which may make a closed loop send its
next request now, and the KV events, fed to the router's index), then the load's sends due now,
and only then does each idle replica with work schedule its next step. So a request that arrives
at the moment a step ends joins the next step, as a request the engine core finds in its input
queue between two steps does live.

With `way_in_cpu`, that much of a request's way in is work on its replica's core (shared_core.py):
the request is routed when sent, waits for the API server's earlier way-ins, and the engine step
the work falls in ends that much later; the rest of the way in (the client's side, the hops
between processes, the first token's way out) passes elsewhere. `request_cpu` is the engine core's
own work on a request outside its steps (taking it in, its block hashes, its end), on the same
core: the step running when the request comes in, or the next one, ends that much later. With
`router_cpu` and `stream_cpu`, every request and every sampled token costs that much CPU in
processes that have no core of their own and run on the workers' (the router, a load generator
beside it): on a core left idle when there is one, else shared out among the replicas with work,
whose steps end that much later. Way-in
times and the client's time between an answer and its next send can be drawn per request from
measured ones (draws.py) instead of one constant.

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
from tokenworks.plan.shared_core import SharedCore
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
    request's latency, 0 unless given. `way_in` draws each request's arrival delay instead of the
    constant (a `Draws` of measured ones); `client_gaps` the client's time from an answer's end
    to what it sends next; `way_in_cpu` is the CPU (seconds) each way in costs its replica's core (the module's docstring;
    at most the request's whole way in); `request_cpu` the engine core's own CPU per request
    outside its steps; `router_cpu` and `stream_cpu` the CPU each request and each sampled token
    cost the replicas' cores outside their own processes (the module's docstring)."""

    def __init__(
        self, replicas: list[Replica], clock: SimClock, router: SimRouter | None = None,
        arrival_delay: float = 0.0, delivery_delay: float = 0.0, way_in: Callable[[], float] | None = None,
        client_gaps: Callable[[], float] | None = None, way_in_cpu: float = 0.0, request_cpu: float = 0.0,
        router_cpu: float = 0.0, stream_cpu: float = 0.0,
    ) -> None:  # fmt: skip
        if len(replicas) > 1 and router is None:
            raise ValueError("several replicas need a router to choose between them")
        if min(arrival_delay, delivery_delay, way_in_cpu, request_cpu, router_cpu, stream_cpu) < 0:
            raise ValueError("delays cannot be negative")
        self.replicas, self.clock, self.router = replicas, clock, router
        self.arrival_delay, self.delivery_delay = arrival_delay, delivery_delay
        self.way_in, self.client_gaps = way_in, client_gaps
        self.cores = [SharedCore() for _ in replicas] if way_in_cpu else None
        self.way_in_cpu, self.request_cpu, self.router_cpu, self.stream_cpu = (
            way_in_cpu, request_cpu, router_cpu, stream_cpu)  # fmt: skip
        self._owed = [0.0] * len(replicas)  # core time a replica's next step pays (it had none running)
        self._versions = [0] * len(replicas)  # a step's end moved by a way-in leaves its old event stale
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
        """The request leaves the client now; it reaches the engine after the arrival delay (on
        shared cores, after its replica's API server has done its way in)."""
        now = send.record.sent = self.clock.now
        delay = self.way_in() if self.way_in is not None else self.arrival_delay
        if self.router_cpu:
            self._share_coreless_cpu(self.router_cpu)
        if self.cores is not None:  # the work on the core first, then the rest of the way
            route = self._route(send)
            work = min(delay, self.way_in_cpu)
            done = self._take_core(route[0], now, work) + (delay - work)
            self.call_at(done, lambda: self._arrive(send, route))
        elif delay:
            self.call_at(now + delay, lambda: self._arrive(send))
        else:
            self._arrive(send)

    def _route(self, send: Send) -> tuple[int, Flight | None]:
        if self.router is None:
            return 0, None
        session = send.spec.session if send.spec is not None else None
        return self.router.route(send.prompt_ids, len(send.output_ids), session)

    def _take_core(self, position: int, now: float, seconds: float) -> float:
        """A way-in of `seconds` on the replica's core: when it reaches the engine. A step running
        when it starts ends that much later (its event is pushed again, the old one left stale)."""
        start, end = self.cores[position].admit(now, seconds)
        busy_until = self.replicas[position].busy_until
        if seconds and busy_until is not None and start < busy_until:
            self._charge(position, seconds)
        return end

    def _push_step_end(self, position: int) -> None:
        entry = (position, self._versions[position])
        heapq.heappush(self._events, (self.replicas[position].busy_until, _STEP_END, next(self._order), entry))

    def _arrive(self, send: Send, route: tuple[int, Flight | None] | None = None) -> None:
        """The request reaches the server now: routed (unless it was when sent), then queued in
        its replica's scheduler."""
        now = self.clock.now
        record = send.record
        replica, flight = route if route is not None else self._route(send)
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
        if self.request_cpu:
            self._charge(replica, self.request_cpu)
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
                    position, version = payload
                    if version == self._versions[position]:
                        self._end_step(position)
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
                    if self.cores is not None:  # the way-ins under way take the core first
                        now = self.clock.now
                        replica.busy_until = self.cores[position].engine_end(now, end - now)
                    if self._owed[position]:
                        replica.busy_until += self._owed[position]
                        self._owed[position] = 0.0
                    self._push_step_end(position)
        self._ready.clear()

    def _end_step(self, position: int) -> None:
        replica = self.replicas[position]
        first, finished = replica.end_step()
        self._ready.add(position)
        if self.stream_cpu and replica.last_sampled:
            self._share_coreless_cpu(self.stream_cpu * replica.last_sampled)
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

    def _share_coreless_cpu(self, seconds: float) -> None:
        """CPU of processes without a core of their own: free while a replica has nothing to do
        (its core is idle), else an equal share on every replica with work."""
        working = [i for i, replica in enumerate(self.replicas) if replica.busy_until is not None or replica.has_work()]
        if len(working) < len(self.replicas):
            return
        for position in working:
            self._charge(position, seconds / len(working))

    def _charge(self, position: int, seconds: float) -> None:
        """Core time taken from a replica's engine: its running step ends that much later (its
        event pushed again), or, idle, its next step does."""
        replica = self.replicas[position]
        if replica.busy_until is None:
            self._owed[position] += seconds
        else:
            replica.busy_until += seconds
            self._versions[position] += 1
            self._push_step_end(position)

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
        """The client has the whole answer (after the delivery delay) and, after its own time on
        it, sends what follows."""
        if send.then is None:
            return
        later = self.delivery_delay + (self.client_gaps() if self.client_gaps is not None else 0.0)
        if later:
            self.call_at(self.clock.now + later, lambda: send.then(send))
        else:
            send.then(send)
