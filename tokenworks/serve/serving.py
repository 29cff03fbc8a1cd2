"""What completions and chat share: the server's state, admission, sampling parameters, fan-out.

Admission: the server holds at most `max_num_seqs + max_queued_requests` engine requests
(each of `n` choices counts); beyond that it answers 429 with Retry-After instead of
queueing without bound. `n` > 1 and batched prompts fan out into one engine request per
choice (with a seed, choice i gets seed + i, as vLLM does), merged into one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tokenworks.engine import AsyncLLM, RequestOutput, SamplingParams
from tokenworks.errors import TokenizerError
from tokenworks.serve.config import ServerConfig
from tokenworks.serve.errors import APIError
from tokenworks.serve.metrics import RequestTracker, ServerMetrics
from tokenworks.serve.protocol import SamplingFields

MIN_TEMPERATURE = 1e-2  # as vLLM: smaller positive temperatures overflow the scaled logits


@dataclass
class ServerState:
    config: ServerConfig
    engine: AsyncLLM
    metrics: ServerMetrics
    capacity: int
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    draining: bool = False

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_name:
            raise APIError(
                404, f"the model {model!r} does not exist; this server serves {self.config.model_name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip

    def check_open(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down and accepts no new requests", code="shutting_down")
        if self.engine.dead_error is not None:
            raise APIError(503, f"the engine is not available: {self.engine.dead_error}", code="engine_unavailable")

    def admit(self, count: int) -> Ticket:
        """Reserve room for `count` engine requests, or 429 when the queue is full."""
        if count > self.capacity:
            raise APIError(
                400, f"this request needs {count} engine requests (prompts x n); this server holds at most "
                f"{self.capacity} at once", param="n",
            )  # fmt: skip
        if self.in_flight + count > self.capacity:
            raise APIError(
                429, f"the server's queue is full ({self.in_flight} requests in flight, at most {self.capacity}); "
                "retry later", code="queue_full", headers={"Retry-After": "1"},
            )  # fmt: skip
        self.in_flight += count
        return Ticket(self, count)


class Ticket:
    """Room held in the queue; released once, however the request ends."""

    def __init__(self, state: ServerState, count: int) -> None:
        self.state, self.count = state, count

    def release(self) -> None:
        if self.count:
            self.state.in_flight -= self.count
            self.count = 0


@contextlib.contextmanager
def bad_request():
    """Our own checks and the engine's raise ValueError (or TokenizerError): a 400."""
    try:
        yield
    except (ValueError, TokenizerError) as error:
        raise APIError(400, str(error)) from None


def usage(prompts: list[list[int]], finals: dict[int, RequestOutput], n: int) -> dict:
    """OpenAI's usage: each prompt counted once, every choice's tokens, cached prompt tokens."""
    prompt_tokens = sum(len(ids) for ids in prompts)
    completion_tokens = sum(len(output.token_ids) for output in finals.values())
    cached = sum(finals[p * n].num_cached_tokens for p in range(len(prompts)) if p * n in finals)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def collect_finals(choices: AsyncIterator[tuple[int, RequestOutput]]) -> dict[int, RequestOutput]:
    """Run every choice to the end (the non-streaming answer): the last output of each."""
    finals: dict[int, RequestOutput] = {}
    async for index, output in choices:
        finals[index] = output
    return finals


class StreamUsage:
    """The usage of a stream as its chunks go out: per chunk when `continuous_usage_stats`
    is asked for, and one last chunk with `choices: []` when `include_usage` is."""

    def __init__(self, prompt_ids: list[list[int]], n: int, options) -> None:
        self.prompt_ids, self.n = prompt_ids, n
        self.include = options is not None and options.include_usage
        self.continuous = self.include and options.continuous_usage_stats
        self.finals: dict[int, RequestOutput] = {}

    def chunk(self, base: dict, choice: dict, index: int, output: RequestOutput) -> dict:
        if output.finished:
            self.finals[index] = output
        chunk = {**base, "choices": [choice]}
        if self.continuous:
            chunk["usage"] = usage(self.prompt_ids, {**self.finals, index: output}, self.n)
        return chunk

    def last_chunk(self, base: dict) -> dict | None:
        return {**base, "choices": [], "usage": usage(self.prompt_ids, self.finals, self.n)} if self.include else None


def finite(value: float) -> float:
    """JSON has no infinities: -inf logprobs become -9999.0, as vLLM writes them."""
    return value if math.isfinite(value) else -9999.0


def token_text(state: ServerState, token_id: int) -> str:
    tokenizer = state.engine.tokenizer
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_params(body: SamplingFields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """The engine's parameters for a body; ValueError (a 400) names any field out of range."""
    temperature = 1.0 if body.temperature is None else body.temperature
    if 0.0 < temperature < MIN_TEMPERATURE:
        temperature = MIN_TEMPERATURE
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        temperature=temperature,
        top_k=body.top_k or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        stop=stop,
        stop_token_ids=list(body.stop_token_ids or []),
        include_stop_str_in_output=body.include_stop_str_in_output,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        skip_special_tokens=body.skip_special_tokens,
    )


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One parameter set per choice: with a seed, choice i samples with seed + i."""
    if n == 1 or params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]


async def _tracked(
    state: ServerState, prompt_ids: list[int], params: SamplingParams, request_id: str, arrival: float
) -> AsyncIterator[RequestOutput]:
    tracker = RequestTracker(state.metrics, arrival)
    try:
        async for output in state.engine.generate(prompt_ids, params, request_id=request_id):
            tracker.observe(output)
            yield output
    finally:
        tracker.finish()


async def generate_choices(
    state: ServerState, request_id: str, prompts: list[list[int]], params: SamplingParams, n: int
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run prompts x n engine requests at once; yield (choice index, output) as each grows.

    Choice index is prompt_index * n + i, as OpenAI numbers batched completions. Closing
    this iterator early (a client disconnect) aborts every unfinished engine request.
    """
    arrival = time.monotonic()
    streams = [
        _tracked(state, ids, choice, f"{request_id}-{p}-{i}", arrival)
        for p, ids in enumerate(prompts)
        for i, choice in enumerate(choice_params(params, n))
    ]
    if len(streams) == 1:
        try:
            async for output in streams[0]:
                yield 0, output
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as error:
            queue.put_nowait((index, error))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
