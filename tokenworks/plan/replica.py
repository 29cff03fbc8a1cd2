"""One engine replica on the simulated clock: the engine's own scheduler and KV cache manager,
with each step's time given by a step-latency model instead of a model run.

A step is what `EngineCore.step` does, less the model: `Scheduler.schedule()` picks the chunks
(chunked prefill, prefix hits, preemption all happen there, in the engine's code), the latency
model prices the step from its shape, and when the step's time is up every chunk advances as the
core's `_run` advances it: computed tokens move on, each chunk that reaches the end of its
request's tokens samples one token, a request with all its tokens finishes and frees its blocks.
The sampled tokens are the request's planned output ids (the workload says how many each request
makes), so block hashes are of real token ids and prefix caching sees what it would see live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenworks.engine.kv_cache_manager import KVCacheManager
from tokenworks.engine.request import Request, RequestStatus, check_prompt
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.engine.scheduler import Scheduler, SchedulerOutput
from tokenworks.plan.clock import SimClock
from tokenworks.plan.step import StepLatency, StepShape

_ANY_VOCAB = 1 << 62  # prompts are the model tokenizer's ids: only the lengths need checking


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """The engine options that decide scheduling, with the engine's defaults (options.py)."""

    num_kv_blocks: int
    block_size: int
    max_model_len: int
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"


class Replica:
    def __init__(
        self, config: ReplicaConfig, latency: StepLatency, clock: SimClock, kv_events: bool = False,
        trace: bool = False, speed: Callable[[float], float] | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.latency = latency
        self.speed = speed  # the host's: a step begun now takes this many times the model's time (host_speed.py)
        self.clock = clock
        self.kv_cache = KVCacheManager(config.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        if kv_events and config.enable_prefix_caching:
            self.kv_cache.pool.events = []  # recorded as the live engine records them for its publisher
        self.scheduler = Scheduler(
            self.kv_cache, config.max_num_batched_tokens, config.max_num_seqs, config.scheduling_policy, clock=clock
        )
        self.busy_until: float | None = None  # when the step now running ends; None while idle
        self.busy_seconds = 0.0
        self.steps = 0
        self.last_sampled = 0  # tokens the step that ended last sampled
        self._step: SchedulerOutput | None = None
        self._sampling: list[Request] = []  # the running step's requests that sample a token
        self._planned: dict[str, Sequence[int]] = {}  # request id -> the output ids it will "sample"
        # Each step's chunks as (request id, start, tokens), when asked for (the parity test).
        self.trace: list[list[tuple[str, int, int]]] | None = [] if trace else None

    def add(self, request_id: str, prompt_ids: list[int], output_ids: Sequence[int], arrival: float) -> Request:
        """Queue a request that will make exactly `output_ids` (as the benchmark asks: ignore_eos
        and min_tokens = max_tokens); ValueError, as the server's 400, when it cannot fit."""
        count = len(output_ids)
        params = SamplingParams(max_tokens=count, min_tokens=count, ignore_eos=True, temperature=0.0)
        length, limit = len(prompt_ids), self.config.max_model_len
        if not length or length + count > limit:  # what check_prompt refuses, in the engine's words
            check_prompt(prompt_ids, params, limit, _ANY_VOCAB)  # (its id check walks the prompt: skipped)
        request = Request(request_id, prompt_ids, params, arrival_time=arrival)
        self._planned[request_id] = output_ids
        self.scheduler.add_request(request)
        return request

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def start_step(self) -> float | None:
        """Schedule a step now; when it ends (None: nothing to run, the replica stays idle)."""
        output = self.scheduler.schedule()
        chunks = output.chunks
        if not chunks:
            return None
        # StepShape.of's shape and the core's list of sampling requests, in one pass (this loop
        # and end_step's are most of a simulated step's own cost). Nothing touches a running
        # request between here and the step's end, so which chunks sample is known now.
        shape, sampling = [], []
        for chunk in chunks:
            request, start, count = chunk.request, chunk.start, chunk.num_tokens
            shape.append((count, start))
            if start + count == len(request.all_token_ids):
                sampling.append(request)
        if self.trace is not None:
            self.trace.append([(chunk.request.request_id, chunk.start, chunk.num_tokens) for chunk in chunks])
        seconds = self.latency.step_seconds(StepShape(tuple(shape), len(sampling)))
        if self.speed is not None:
            seconds *= self.speed(self.clock.now)
        self._step, self._sampling = output, sampling
        self.steps += 1
        self.busy_seconds += seconds
        self.busy_until = self.clock.now + seconds
        return self.busy_until

    def end_step(self) -> tuple[list[Request], list[Request]]:
        """Apply the step that ends now, as EngineCore._run does after the model: (requests that got
        their first token, requests that finished)."""
        output, sampling = self._step, self._sampling
        self._step, self.busy_until = None, None
        self.last_sampled = len(sampling)
        now = self.clock.now
        for chunk in output.chunks:
            chunk.request.num_computed_tokens += chunk.num_tokens
        first, finished = [], []
        max_model_len, planned_of = self.config.max_model_len, self._planned
        for request in sampling:
            planned = planned_of[request.request_id]
            outputs = request.output_token_ids
            token = planned[len(outputs)]
            outputs.append(token)  # Request.append_output_token, inlined
            request.all_token_ids.append(token)
            times = request.times
            times.tokens.append(now)
            if times.first_token is None:
                times.first_token = now
                first.append(request)
            # The core's stop rule for these requests: max_tokens, or a full context (no EOS: the
            # planned ids hold none, and ignore_eos is set).
            if len(outputs) >= len(planned) or len(request.all_token_ids) >= max_model_len:
                self.scheduler.finish(request, RequestStatus.FINISHED_LENGTH)
                del planned_of[request.request_id]
                finished.append(request)
        return first, finished

    def take_kv_events(self) -> list[dict]:
        """The prefix cache's changes since the last call (what the core publishes after a step)."""
        pool = self.kv_cache.pool
        events = pool.events
        if not events:
            return []
        pool.events = []
        return events
