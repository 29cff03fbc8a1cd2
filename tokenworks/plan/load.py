"""When simulated requests are sent: the load generator's rules (bench/loadgen.py) on the
simulated clock.

Closed loop at concurrency C: C senders, each sending its next request when the last one ends.
Open loop at rate R: a seeded Poisson or gamma schedule (the very schedule `tokenworks bench`
uses with the same seed), optionally capped at C in flight, later requests waiting for a slot.
Warmup requests go first, closed loop, flagged in their records. A run stops sending at
`num_requests` or once `duration` has passed; multi-turn sessions send each turn when the last
reply arrived, the reply's text in the conversation. `ReplayLoad` sends a recorded run's
requests again at their recorded times, with their recorded token counts.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tokenworks.bench.loadgen import LoadOptions, arrival_times
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import RequestSpec, Workload
from tokenworks.errors import PlanError
from tokenworks.plan.prompts import SimPrompts


@dataclass(slots=True)
class Send:
    """One request as it leaves the simulated client: its record (filled in as it is answered),
    prompt ids and planned output ids, and what sent it (for what follows its answer)."""

    record: RequestRecord
    prompt_ids: list[int]
    output_ids: list[int]
    spec: RequestSpec | None = None
    then: Callable[[Send], None] | None = None  # called when it is answered (or refused)
    replica: int | None = None  # where it was served (the simulation sets it)


class Sender(Protocol):
    """The simulation, as the load sees it."""

    def now(self) -> float: ...

    def call_at(self, moment: float, action: Callable[[], None]) -> None: ...

    def submit(self, send: Send) -> None: ...


class _Budget:
    """Requests that may still start (None: any number), and until when (simulated seconds)."""

    def __init__(self, count: int | None, deadline: float | None) -> None:
        self.count, self.deadline = count, deadline

    def take(self, now: float) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.deadline is not None and now >= self.deadline:
            return False
        if self.count is not None:
            self.count -= 1
        return True


class Prepared:
    """A workload's first requests and their prompt ids, built and encoded once: every point of a
    sweep sends the same ones (the same seed), as many as its count."""

    def __init__(self, workload: Workload, prompts: SimPrompts, count: int) -> None:
        self.specs = workload.take(count)
        self.ids = prompts.prompt_ids_of(self.specs)


class WorkloadLoad:
    """A workload sent as `LoadOptions` say, as loadgen.py sends it live."""

    def __init__(
        self, workload: Workload, options: LoadOptions, prompts: SimPrompts, prepared: Prepared | None = None
    ) -> None:
        options.validate()
        self.workload, self.options, self.prompts = workload, options, prompts
        total = options.warmup_requests + options.num_requests if options.num_requests is not None else None
        self.specs: Iterator[RequestSpec] = iter(workload)
        self._ids: dict[int, list[int]] = {}  # id(spec) -> its prompt ids, encoded ahead
        if total is not None:  # every prompt built and encoded before the run, as loadgen builds them
            if prepared is None or len(prepared.specs) < total:
                prepared = Prepared(workload, prompts, total)
            specs = prepared.specs[:total]
            self.specs = iter(specs)
            self._ids = {id(spec): ids for spec, ids in zip(specs, prepared.ids, strict=False)}
        self.records: list[RequestRecord] = []
        self.measured_start = 0.0
        self.sender: Sender | None = None
        self._senders = 0  # closed-loop senders still running in the current phase
        self._free_slots: int | None = None  # open loop with a concurrency cap
        self._queued: deque[Send] = deque()

    def start(self, sender: Sender) -> None:
        self.sender = sender
        options = self.options
        if options.warmup_requests:
            width = min(options.warmup_requests, options.concurrency or options.warmup_requests)
            self._closed_loop(width, _Budget(options.warmup_requests, None), warmup=True)
        else:
            self._measured()

    # ---- the phases -------------------------------------------------------------------------

    def _measured(self) -> None:
        options, now = self.options, self.sender.now()
        self.measured_start = now
        deadline = now + options.duration if options.duration is not None else None
        budget = _Budget(options.num_requests, deadline)
        if options.open_loop:
            self._open_loop(now, budget)
        else:
            self._closed_loop(options.concurrency, budget, warmup=False)

    def _closed_loop(self, width: int, budget: _Budget, warmup: bool) -> None:
        self._senders = width

        def next_request() -> None:
            if budget.take(self.sender.now()):
                self._chain(next(self.specs), warmup, None, budget, next_request)
            else:
                self._senders -= 1
                if warmup and self._senders == 0:
                    self._measured()

        for _ in range(width):
            next_request()

    def _open_loop(self, start: float, budget: _Budget) -> None:
        options = self.options
        self._free_slots = options.concurrency
        offsets = self._offsets()

        def tick(position: int) -> None:
            offset = offsets[position]
            if options.duration is not None and offset >= options.duration:
                return
            if not budget.take(self.sender.now()):
                return
            self._chain(next(self.specs), False, start + offset, budget, None)
            if position + 1 < len(offsets):
                self.sender.call_at(start + offsets[position + 1], lambda: tick(position + 1))

        if offsets:
            self.sender.call_at(start + offsets[0], lambda: tick(0))

    def _offsets(self) -> list[float]:
        """The open-loop send times from the phase's start: loadgen's schedule with the same seed,
        as many as the run can use (with a duration, grown until one falls past it)."""
        options = self.options
        rate, arrival, shape = options.request_rate, options.arrival, options.burstiness
        if options.duration is None or rate is None or math.isinf(rate):
            return arrival_times(rate, options.num_requests, arrival, shape, random.Random(options.seed))
        count = int(rate * options.duration * 1.5) + 16
        while True:
            times = arrival_times(rate, count, arrival, shape, random.Random(options.seed))
            if times[-1] >= options.duration or (options.num_requests is not None and count >= options.num_requests):
                return times
            count *= 2

    # ---- one request and the turns after it -------------------------------------------------------

    def _chain(
        self, spec: RequestSpec, warmup: bool, intended: float | None, budget: _Budget,
        then: Callable[[], None] | None,
    ) -> None:  # fmt: skip
        record = RequestRecord(
            index=len(self.records), warmup=warmup, intended_send=intended, sent=0.0,
            requested_output_tokens=spec.max_tokens, session=spec.session, turn=spec.turn,
        )  # fmt: skip
        self.records.append(record)
        if spec.max_tokens is None:
            raise PlanError("the simulator needs each request's output length: give --output-tokens")
        output_ids = self.prompts.output_ids(record.index, spec.max_tokens)
        prompt_ids = self._ids.pop(id(spec), None)
        if prompt_ids is None:
            prompt_ids = self.prompts.prompt_ids(spec)
        send = Send(record, prompt_ids, output_ids, spec)

        def answered(done: Send) -> None:
            self._release()
            next_spec = None
            if done.record.ok and done.spec.turn is not None:
                next_spec = self.workload.next_turn(done.spec, self.prompts.text(done.output_ids))
            if next_spec is None or not budget.take(self.sender.now()):
                if then is not None:
                    then()
                return
            follow = self.sender.now() if intended is not None else None  # open loop: due when the reply came
            self._chain(next_spec, warmup, follow, budget, then)

        send.then = answered
        self._acquire(send)

    def _acquire(self, send: Send) -> None:
        if self._free_slots is None:
            self.sender.submit(send)
        elif self._free_slots > 0:
            self._free_slots -= 1
            self.sender.submit(send)
        else:
            self._queued.append(send)

    def _release(self) -> None:
        if self._free_slots is None:
            return
        if self._queued:
            self.sender.submit(self._queued.popleft())
        else:
            self._free_slots += 1


class ReplayLoad:
    """A recorded run's requests (a `tokenworks bench` requests.jsonl) sent again at their recorded
    times (the schedule's, for an open loop; the actual sends for a closed one), each with its
    recorded prompt and output token counts. The log has no prompts, so the replayed prompts
    share nothing: prefix caching is not replayed."""

    def __init__(self, path: Path, prompts: SimPrompts, point: str | None = None) -> None:
        self.prompts = prompts
        self.recorded = _recorded_point(path, point)
        self.records: list[RequestRecord] = []
        profiled = [record.sent for record in self.recorded if not record.warmup]
        self.measured_start = min(profiled) if profiled else 0.0
        self.sender: Sender | None = None

    def start(self, sender: Sender) -> None:
        self.sender = sender
        for old in self.recorded:
            due = old.intended_send if old.intended_send is not None else old.sent
            sender.call_at(due, lambda old=old, due=due: self._send(old, due))

    def _send(self, old: RequestRecord, due: float) -> None:
        record = RequestRecord(
            index=len(self.records), warmup=old.warmup, intended_send=old.intended_send, sent=0.0,
            requested_output_tokens=old.requested_output_tokens, session=old.session, turn=old.turn,
        )  # fmt: skip
        self.records.append(record)
        outputs = old.output_tokens if old.output_tokens else old.requested_output_tokens
        prompt = self.prompts.filler_ids(record.index, old.input_tokens)
        self.sender.submit(Send(record, prompt, self.prompts.output_ids(record.index, outputs)))


def _recorded_point(path: Path, point: str | None) -> list[RequestRecord]:
    """The records of one point of a requests.jsonl that can be sent again (token counts known)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PlanError(f"cannot read the request log {path}: {error}") from None
    points: dict[str, list[RequestRecord]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            label = data.pop("point", "")
            record = RequestRecord.from_json(data)
        except (ValueError, TypeError, AttributeError) as error:
            raise PlanError(f"{path}, line {number}: not a tokenworks bench request record ({error})") from None
        points.setdefault(label, []).append(record)
    if not points:
        raise PlanError(f"the request log {path} has no records")
    if point is None:
        if len(points) > 1:
            raise PlanError(f"{path} holds {len(points)} points ({', '.join(points)}); name one with --replay-point")
        point = next(iter(points))
    if point not in points:
        raise PlanError(f"{path} has no point {point!r}; it has: {', '.join(points)}")
    usable = [
        record for record in points[point]
        if record.input_tokens and (record.output_tokens or record.requested_output_tokens)
    ]  # fmt: skip
    if not usable:
        raise PlanError(f"no record of point {point!r} in {path} has its token counts")
    return sorted(usable, key=lambda record: record.intended_send if record.intended_send is not None else record.sent)
