"""The fast mode: one engine replica as batch totals and closed-form runs of decode steps.

The exact mode (replica.py) runs the engine's own scheduler, a Python object per request and per
step; a fleet search needs millions of requests in seconds. This module keeps the scheduler's
rules (scheduler.py) but not its objects:

- each step serves the running requests first (every decoding request one token, the one
  request whose prompt is part-way through its chunk of the rest of the budget), then admits
  waiting ones first come first served while the token budget (`max_num_batched_tokens`), the
  running limit (`max_num_seqs`) and the KV cache allow, the last admitted cut to the budget:
  so at most one request is ever part-way through its prompt, always the newest;
- decoding requests are totals: request i's context at step j is a_i + j, so the batch's keys
  at step j are sum(a_i) + B (j + 1), and a heap holds the step at which each one ends;
- while only decodes run, a step's time is linear in j within one side of the roofline
  (latency's max(compute, memory)), so a whole run of steps, up to the next request that ends,
  the next arrival that could join, the KV cache filling or the roofline's crossover, is summed
  in closed form (`_first_step_at`, `_run_seconds`);
- prefix caching is an input: each request's cached prompt tokens (fast_workload.py estimates
  them from the prompts' blocks, or a hit rate gives them);
- the KV cache is counted in tokens, each request rounding up half a block on average (the exact
  mode counts blocks); when it is full the newest request is preempted, and nothing is admitted
  until a request finishes (the block the preemption freed went to the request that needed it);
  the victim recomputes its prompt and the tokens it made, less its full blocks, which the
  prefix cache keeps.

Pure Python scalars and a heap; numpy only for the arrays it returns. No torch.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from tokenworks.errors import PlanError
from tokenworks.plan.fast_load import Sends
from tokenworks.plan.linear_step import LinearStep
from tokenworks.plan.replica import ReplicaConfig
from tokenworks.plan.roofline import attended_keys


@dataclass(frozen=True, slots=True)
class FastEngine:
    num_kv_blocks: int
    block_size: int
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    # A decode replica of a prefill/decode split: a request arrives with its prompt's KV and its
    # first token (made by the prefill replica), and joins the next step as a decode.
    prefilled: bool = False
    enable_prefix_caching: bool = True

    @classmethod
    def of(cls, config: ReplicaConfig, prefilled: bool = False) -> FastEngine:
        return cls(config.num_kv_blocks, config.block_size, config.max_num_batched_tokens, config.max_num_seqs,
                   prefilled, config.enable_prefix_caching)  # fmt: skip

    def validate(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise PlanError(
                "the fast mode takes every running request's decode to fit one step's budget: "
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_num_seqs ({self.max_num_seqs})"
            )


@dataclass(slots=True)
class FastRequests:
    """Per request, in schedule order: prompt tokens, output tokens, prompt tokens cached."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cached_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.input_tokens)


@dataclass(slots=True)
class FastRun:
    """What happened to each request (client times, seconds), and the replica's totals."""

    requests: FastRequests
    sent: np.ndarray
    first_token: np.ndarray  # nan for a request that made no token (a decode replica's input)
    last_token: np.ndarray
    warmup: int  # the first `warmup` requests are warmup
    measured_start: float
    steps: int
    busy_seconds: float
    end: float
    preemptions: int
    wall_seconds: float


def run_replica(engine: FastEngine, step: LinearStep, requests: FastRequests, sends: Sends) -> FastRun:
    """Serve `requests` as `sends` sends them; the steps as the engine's scheduler would take them."""
    engine.validate()
    began = time.perf_counter()
    total = sends.total
    if len(requests) < total:
        raise PlanError(f"the load sends {total} requests but the workload has {len(requests)}")
    length = requests.input_tokens[:total].tolist()  # tokens to compute on admission
    start = requests.cached_tokens[:total].tolist()  # of them, found in the prefix cache
    left = requests.output_tokens[:total].tolist()  # tokens still to sample
    first, last = [math.nan] * total, [math.nan] * total
    offset, end_step = [0] * total, [0] * total  # a decode's context is offset + step; its last step
    alive = bytearray(total)  # running now
    block, blocks = engine.block_size, engine.num_kv_blocks
    capacity, rounding = blocks * block, (block - 1) / 2  # each request's last block: half empty on average
    max_tokens, max_seqs, prefilled, window, caching = (
        engine.max_num_batched_tokens, engine.max_num_seqs, engine.prefilled, step.window,
        engine.enable_prefix_caching,
    )  # fmt: skip
    due, answered = sends.due, sends.answered
    waiting: deque[int] = deque()
    order: list[int] = []  # admission order, finished ones left in until they reach the end
    ends: list[tuple[int, int]] = []  # (last step, request) of each decode
    now, steps, batch, offsets, busy, preemptions = 0.0, 0, 0, 0, 0.0, 0
    partial, partial_done = -1, 0  # the request part-way through its prompt, and its tokens computed
    running = 0
    # Set by a preemption until a request finishes: the engine's own count of blocks leaves no room
    # for the victim (or anyone) until then, where this mode's count in tokens might.
    full = False
    admitted = 0  # tokens of the requests admitted in the step being built (not yet counted as decodes)

    def newest() -> int:
        while not alive[order[-1]]:
            order.pop()
        return order[-1]

    def preempt() -> None:
        """Free the newest running request; it waits again at the head of the queue and recomputes."""
        nonlocal batch, offsets, partial, running, preemptions, full
        victim = newest()
        alive[victim] = 0
        running -= 1
        full = running > 0  # an empty cache has room for anyone who fits at all
        preemptions += 1
        if victim == partial:
            computed, partial = partial_done, -1
        else:
            batch -= 1
            offsets -= offset[victim]
            computed = offset[victim] + steps
            length[victim] = computed + 1  # its prompt and every token made so far
            left[victim] = end_step[victim] - steps + 1
        # Its full blocks stay in the prefix cache until evicted: taken as found again.
        start[victim] = min(computed // block * block, (length[victim] - 1) // block * block) if caching else 0
        waiting.appendleft(victim)

    def decode(request: int) -> None:
        """The request decodes from the next step on (its context: everything computed)."""
        nonlocal batch, offsets
        offset[request] = length[request] - steps
        end_step[request] = steps + left[request] - 1
        heapq.heappush(ends, (end_step[request], request))
        batch += 1
        offsets += offset[request]

    def finish(request: int) -> None:
        nonlocal running, full
        full = False
        alive[request] = 0
        running -= 1
        last[request] = now
        answered(request, now)

    def finish_decodes() -> None:
        """The decodes whose last step was the one just run (stale heap entries skipped)."""
        nonlocal batch, offsets
        while ends and (not alive[ends[0][1]] or end_step[ends[0][1]] != ends[0][0] or ends[0][0] < steps):
            entry, request = heapq.heappop(ends)
            if alive[request] and end_step[request] == entry:
                batch -= 1
                offsets -= offset[request]
                finish(request)

    def fits(request: int, budget: int) -> bool:
        if full:
            return False
        held = offsets + batch * (steps + 1) + (partial_done if partial >= 0 else 0) + running * rounding + admitted
        tokens = length[request] + 1 if prefilled else start[request] + min(length[request] - start[request], budget)
        return held + block * -(-tokens // block) <= capacity

    while True:
        while due and due[0][0] <= now:
            waiting.append(due.popleft()[1])
        admissible = waiting and running < max_seqs and fits(waiting[0], max_tokens - batch)
        if partial < 0 and not admissible:
            if batch == 0:
                if waiting:
                    raise PlanError(
                        f"a request of {length[waiting[0]]} tokens does not fit a KV cache of {capacity} tokens"
                    )
                if not due:
                    break
                now = due[0][0]
                continue
            # Only decodes: a run of steps, up to the next event.
            room = (capacity - batch * rounding - offsets) // batch - steps  # steps before the cache is full
            if room < 1:
                preempt()
                continue
            while not alive[ends[0][1]] or end_step[ends[0][1]] != ends[0][0]:
                heapq.heappop(ends)
            count = min(ends[0][0] - steps + 1, int(room))
            keys = offsets + batch * (steps + 1)
            flat = window is not None and keys >= batch * window
            c, cj, m, mj, overhead = step.decode_run(batch, batch * window if flat else keys)
            if flat:
                cj = mj = 0.0
            elif window is not None:  # the window caps the keys: stop the run where the mean reaches it
                count = min(count, max(1, (batch * window - keys) // batch))
            if c >= m:
                alpha, beta = c + overhead, cj
                if mj > cj:  # memory takes over after the crossover
                    count = min(count, int((c - m) / (mj - cj)) + 1)
            else:
                alpha, beta = m + overhead, mj
                if cj > mj:
                    count = min(count, int((m - c) / (cj - mj)) + 1)
            if due and not waiting and running < max_seqs:  # an arrival joins the first step after it
                count = min(count, _first_step_at(alpha, beta, due[0][0] - now))
            seconds = _run_seconds(alpha, beta, count)
            now += seconds
            busy += seconds
            steps += count
            finish_decodes()
            continue

        # One step with prompt work: decodes, the part-way prompt, then admissions.
        budget, admitted = max_tokens, 0
        preempted = preemptions
        while running and not _room_for_running(offsets, batch, steps, partial, partial_done, running, rounding,
                                               capacity, length, max_tokens):  # fmt: skip
            preempt()
        admit = preemptions == preempted  # as the scheduler: no admission in a step that preempted
        if prefilled:  # arrivals join as decodes; nothing to prefill
            while admit and waiting and running < max_seqs and fits(waiting[0], budget):
                request = waiting.popleft()
                alive[request], running = 1, running + 1
                order.append(request)
                offset[request] = length[request] - steps
                end_step[request] = steps + left[request] - 2  # its first token came from the prefill replica
                heapq.heappush(ends, (end_step[request], request))
                batch += 1
                offsets += offset[request]
        tokens = samples = chunks = batch
        keys = reads = offsets + batch * (steps + 1) if batch else 0
        if window is not None:
            keys = reads = min(keys, batch * window)
        budget -= batch
        completing = []
        if partial >= 0 and budget > 0:
            count = min(length[partial] - partial_done, budget)
            tokens, chunks, budget = tokens + count, chunks + 1, budget - count
            keys += attended_keys(count, partial_done, window)
            reads += count + (partial_done if window is None else min(partial_done, window))
            partial_done += count
            if partial_done == length[partial]:
                completing.append(partial)
                samples += 1
                partial = -1
        while admit and not prefilled and budget > 0 and waiting and running < max_seqs and partial < 0:
            request = waiting[0]
            cached = start[request]
            count = min(length[request] - cached, budget)
            if not fits(request, budget):
                break
            waiting.popleft()
            alive[request], running = 1, running + 1
            order.append(request)
            admitted += block * -(-(cached + count) // block)
            tokens, chunks, budget = tokens + count, chunks + 1, budget - count
            keys += attended_keys(count, cached, window)
            reads += count + (cached if window is None else min(cached, window))
            if cached + count == length[request]:
                completing.append(request)
                samples += 1
            else:
                partial, partial_done = request, cached + count
        seconds = step.seconds(tokens, samples, keys, reads, chunks)
        admitted = 0  # they are decodes or the part-way prompt from here on
        now += seconds
        busy += seconds
        steps += 1
        for request in completing:  # each sampled a token
            if first[request] != first[request]:  # nan: its first token
                first[request] = now
            left[request] -= 1
            if left[request] == 0:
                finish(request)
            else:
                decode(request)
        finish_decodes()

    delay = sends.load.delivery_delay
    return FastRun(
        requests=requests, sent=np.array(sends.sent), first_token=np.array(first) + delay,
        last_token=np.array(last) + delay, warmup=sends.load.warmup, measured_start=sends.measured_start,
        steps=steps, busy_seconds=busy, end=now, preemptions=preemptions, wall_seconds=time.perf_counter() - began,
    )  # fmt: skip


def _room_for_running(offsets, batch, steps, partial, partial_done, running, rounding, capacity, length, budget):
    """Whether the running requests' next tokens fit the cache (else the newest is preempted)."""
    held = offsets + batch * (steps + 1) + running * rounding
    if partial >= 0:
        held += min(length[partial], partial_done + budget)
    return held <= capacity


def _run_seconds(alpha: float, beta: float, count: int) -> float:
    """sum over j < count of (alpha + beta j)."""
    return alpha * count + beta * count * (count - 1) / 2


def _first_step_at(alpha: float, beta: float, wait: float) -> int:
    """The fewest steps (at least one) whose summed time reaches `wait`: a request arriving then
    joins the step that starts there."""
    if beta <= 0:
        count = max(1, math.ceil(wait / alpha))
    else:
        b = alpha - beta / 2
        count = max(1, math.ceil((-b + math.sqrt(b * b + 2 * beta * wait)) / beta))
    while count > 1 and _run_seconds(alpha, beta, count - 1) >= wait:  # float rounding, either way
        count -= 1
    while _run_seconds(alpha, beta, count) < wait:
        count += 1
    return count
