"""Server-sent events, and tying a request's work to its client's connection.

A stream is `data: {json}\\n\\n` per chunk and `data: [DONE]\\n\\n` at the end. Both a
stream and a plain request race their work against the client's `http.disconnect`: when
the client goes, the work is cancelled, which aborts its engine requests and frees their
KV blocks at once (not when the next token would have been written).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

DONE = "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def run_until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """The work's result, or ClientGone (with the work cancelled) if the client leaves first.

    The work runs in the caller's own task, watched by one task that cancels it when the client
    goes: a task of its own for the work, and asyncio.wait over both, cost the router 20-30 us
    more a request with its caches cold (docs/benchmarks.md, Router, session 20)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        with contextlib.suppress(Exception):  # a receive that fails: the client is not known gone
            await wait_for_disconnect(request.receive)
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # this cancellation was ours, and it ends here
        raise ClientGone from None
    finally:
        watcher.cancel()  # it ends at its next turn of the loop, which nobody needs to wait for
    if gone:  # the work finished anyway, swallowing the cancellation
        task.uncancel()
    return result


class EventStream(Response):
    """Streams `events` as text/event-stream; a disconnect cancels it, and `on_close` always runs."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        task = asyncio.ensure_future(stream())
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
        finally:
            for pending in (task, watcher):
                if not pending.done():
                    await _cancel(pending)
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()
