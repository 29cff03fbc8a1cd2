"""Fan-out: one HTTP request's prompts x `n` choices as engine requests, merged into one stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tokenworks.engine import RequestOutput, SamplingParams
from tokenworks.serve.metrics import RequestTracker
from tokenworks.serve.sampling import choice_params
from tokenworks.serve.state import ServerState


async def _tracked(
    state: ServerState, prompt_ids: list[int], params: SamplingParams, request_id: str, arrival: float,
    lora: str | None,
) -> AsyncIterator[RequestOutput]:  # fmt: skip
    tracker = RequestTracker(state.metrics, arrival)
    try:
        async for output in state.engine.generate(prompt_ids, params, request_id=request_id, lora=lora):
            tracker.observe(output)
            yield output
    finally:
        tracker.finish()


async def generate_choices(
    state: ServerState, request_id: str, prompts: list[list[int]], params: SamplingParams, n: int,
    lora: str | None = None,
) -> AsyncIterator[tuple[int, RequestOutput]]:  # fmt: skip
    """Run prompts x n engine requests at once (through LoRA adapter `lora`, if named); yield
    (choice index, output) as each grows.

    Choice index is prompt_index * n + i, as OpenAI numbers batched completions. Closing
    this iterator early (a client disconnect) aborts every unfinished engine request.
    """
    arrival = time.monotonic()
    streams = [
        _tracked(state, ids, choice, f"{request_id}-{p}-{i}", arrival, lora)
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


async def collect_finals(choices: AsyncIterator[tuple[int, RequestOutput]]) -> dict[int, RequestOutput]:
    """Run every choice to the end (the non-streaming answer): the last output of each."""
    finals: dict[int, RequestOutput] = {}
    async for index, output in choices:
        finals[index] = output
    return finals
