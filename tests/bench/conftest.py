"""A real OpenAI-style streaming server on 127.0.0.1 (aiohttp.web in a thread) with fault knobs.

Each test sets `server.behaviour` (chunk count and size, delays, usage, an error status, a
break or a hang mid-stream) and reads back what the server saw: request bodies, arrival
times, and the most requests it had in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

MODEL = "test-model"


@dataclass
class Behaviour:
    chunks: int | None = None  # content chunks per answer; None: max_tokens (5 without it)
    tokens_per_chunk: int = 1  # each token is the word " w<i>"
    chunk_delay: float = 0.0  # seconds before each content chunk
    usage: bool = True  # honour stream_options.include_usage
    continuous_usage: bool = True  # honour stream_options.continuous_usage_stats
    status: int = 200  # >= 400: answer with an OpenAI error body instead
    break_after: int | None = None  # drop the connection after this many content chunks
    error_event_after: int | None = None  # send an error event after this many content chunks
    garbage_after: int | None = None  # send a chunk that is not JSON after this many content chunks
    omit_done: bool = False  # end the body without data: [DONE]
    crlf: bool = False  # end lines with \r\n
    hang: bool = False  # take the request and never answer
    models: list[str] = field(default_factory=lambda: [MODEL])
    models_body: bytes | None = None  # answer /v1/models with these bytes instead of a model list


def answer_words(count: int) -> list[str]:
    return [f" w{i}" for i in range(count)]


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []  # perf_counter when each generation request arrived
        self.in_flight = 0
        self.max_in_flight = 0
        self.open: set[int] = set()  # ids of the requests counted in flight
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fake-openai-server", daemon=True)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.bodies.clear()
        self.arrivals.clear()
        self.max_in_flight = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        # handler_cancellation: a client that leaves (a timeout) ends its handler, as in real servers
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.started.set()
        self.loop.run_forever()

    def start(self) -> FakeOpenAIServer:
        self.thread.start()
        self.started.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def models(self, request: web.Request) -> web.Response:
        if self.behaviour.models_body is not None:
            return web.Response(body=self.behaviour.models_body, content_type="text/html")
        cards = [{"id": name, "object": "model", "max_model_len": 2048} for name in self.behaviour.models]
        return web.json_response({"object": "list", "data": cards})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.perf_counter())
        body = await request.json()
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.open.add(id(request))
        try:
            return await self._answer(request, body)
        finally:
            self._done(request)

    def _done(self, request: web.Request) -> None:
        """A request leaves the count once its last bytes are written, before the handler returns."""
        if id(request) in self.open:
            self.open.discard(id(request))
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        behaviour = self.behaviour
        if behaviour.hang:
            await asyncio.sleep(3600)
        if behaviour.status >= 400:
            error = {"error": {"message": "the fake server was told to fail", "type": "server_error", "code": None}}
            return web.json_response(error, status=behaviour.status)
        chat = request.path.endswith("/chat/completions")
        prompt = " ".join(m["content"] for m in body["messages"]) if chat else body["prompt"]
        prompt_tokens = len(prompt.split())
        chunks = behaviour.chunks if behaviour.chunks is not None else body.get("max_tokens") or 5
        words = answer_words(chunks * behaviour.tokens_per_chunk)
        size = behaviour.tokens_per_chunk
        pieces = ["".join(words[i : i + size]) for i in range(0, len(words), size)]

        def usage(completed: int) -> dict:
            total = prompt_tokens + completed
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completed, "total_tokens": total}

        if not body.get("stream"):
            text = "".join(pieces)
            message = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choice = {"index": 0, **message, "finish_reason": "length"}
            return web.json_response({"choices": [choice], "usage": usage(len(words))})
        options = body.get("stream_options") or {}
        include = behaviour.usage and options.get("include_usage")
        continuous = include and behaviour.continuous_usage and options.get("continuous_usage_stats")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        end = b"\r\n" if behaviour.crlf else b"\n"

        async def event(payload: dict | bytes) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            await response.write(b"data: " + data + end + end)

        await response.write(b": a comment the client must skip" + end + end)
        if chat:
            role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            await event({**role, "usage": usage(0)} if continuous else role)
        for index, piece in enumerate(pieces):
            if index == behaviour.break_after:
                request.transport.close()
                return response
            if index == behaviour.error_event_after:
                await event({"error": {"message": "the engine failed mid-stream", "type": "server_error"}})
                break
            if index == behaviour.garbage_after:
                await event(b"{not json")
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            chunk = {"choices": [choice]}
            if continuous:
                chunk["usage"] = usage((index + 1) * behaviour.tokens_per_chunk)
            await event(chunk)
        if include:
            await event({"choices": [], "usage": usage(len(words))})
        self._done(request)
        if not behaviour.omit_done:
            await event(b"[DONE]")
        await response.write_eof()
        return response


@pytest.fixture(scope="session")
def fake_server_session():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture()
def fake_server(fake_server_session):
    """The session's fake server, with default behaviour and empty logs for each test."""
    fake_server_session.reset()
    return fake_server_session
