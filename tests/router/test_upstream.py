"""The router's forwarding client (router/upstream.py) against scripted HTTP servers on localhost:
what it sends, answers by length, by chunks and to the connection's end, kept-alive connections
reused and stale ones replaced, broken and malformed answers, backpressure, and an answer left
early closing its connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from tokenworks.router.upstream import HIGH_WATER_BYTES, UpstreamError, WorkerConnections

Handler = Callable[["ScriptedServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """A TCP server whose every connection runs `handler(server, reader, writer, connection_number)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await self.handler(self, reader, writer, self.connections)
        writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and body by its content-length), recorded; b"" at the client's end."""
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return b""
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def run_against(
    handler: Handler, scenario: Callable[[ScriptedServer, WorkerConnections], Awaitable[None]]
) -> ScriptedServer:
    """Runs `scenario(server, connections)` against a ScriptedServer answering with `handler`."""

    async def run() -> ScriptedServer:
        async with ScriptedServer(handler) as server:
            connections = WorkerConnections(connect_timeout_s=2)
            try:
                await scenario(server, connections)
            finally:
                await connections.close()
        return server

    return asyncio.run(run())


def keep_alive_answers(body: bytes) -> Handler:
    """Answers every request on a connection with `body` by its length, keeping it open."""

    async def handler(server, reader, writer, _number):
        while True:
            try:
                await server.read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    return handler


def test_a_post_sends_the_body_as_given_and_reuses_the_connection():
    async def scenario(server, connections):
        for _ in range(3):
            answer = await connections.post(server.url, "/v1/completions", b'{"prompt": "hi"}', {"x-request-id": "r1"})
            assert (answer.status, answer.content_type) == (200, "application/json")
            assert await answer.read() == b'{"ok": true}'
            answer.release()

    server = run_against(keep_alive_answers(b'{"ok": true}'), scenario)
    assert server.connections == 1  # kept alive: one connection for the three requests
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions HTTP/1.1"
    assert set(lines[1:]) == {f"host: {server.url[7:]}".encode(), b"content-length: 16", b"x-request-id: r1"}
    assert body == b'{"prompt": "hi"}'


def test_a_worker_url_with_a_path_keeps_its_path():
    async def scenario(server, connections):
        answer = await connections.post(f"{server.url}/tenant-a", "/v1/chat/completions", b"{}", {})
        assert await answer.read() == b"{}"
        answer.release()

    server = run_against(keep_alive_answers(b"{}"), scenario)
    assert server.requests[0].startswith(b"POST /tenant-a/v1/chat/completions HTTP/1.1\r\n")


def test_a_stream_is_handed_over_chunk_by_chunk_as_it_comes():
    second_may_go = asyncio.Event()

    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await second_may_go.wait()  # the client has the first chunk before the second is sent
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()  # kept open until the client closes it

    async def scenario(server, connections):
        answer = await connections.post(server.url, "/v1/completions", b"{}", {})
        assert (answer.status, answer.content_type) == (200, "text/event-stream")
        received = []
        async for chunk in answer.chunks():
            received.append(chunk)
            second_may_go.set()
        assert received == [b"data: 1", b"data: 2"]
        answer.release()
        assert connections._idle  # a whole answer: its connection kept

    run_against(handler, scenario)


def test_a_connection_the_worker_closed_while_idle_is_replaced_once():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # and closed at once, without saying so (as uvicorn's keep-alive timeout does)

    async def scenario(server, connections):
        for _ in range(3):
            answer = await connections.post(server.url, "/v1/completions", b"{}", {})
            assert await answer.read() == b"ok"
            answer.release()
            await asyncio.sleep(0.05)  # the close reaches the client, or not: both are handled

    server = run_against(handler, scenario)
    assert server.connections == 3 and len(server.requests) == 3


def test_a_request_on_a_kept_connection_that_breaks_before_answering_is_sent_again_on_a_new_one():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if number == 1:
            await server.read_request(reader)  # the second request, on the kept connection
            writer.transport.abort()  # dropped unanswered

    async def scenario(server, connections):
        for _ in range(2):
            answer = await connections.post(server.url, "/v1/completions", b"{}", {})
            assert await answer.read() == b"ok"
            answer.release()

    server = run_against(handler, scenario)
    assert (server.connections, len(server.requests)) == (2, 3)


def test_a_worker_that_is_not_there_is_an_upstream_error():
    async def scenario():
        async with ScriptedServer(keep_alive_answers(b"{}")) as server:
            url = server.url
        connections = WorkerConnections(connect_timeout_s=2)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await connections.post(url, "/v1/completions", b"{}", {})

    asyncio.run(scenario())


def test_a_worker_that_closes_without_answering_is_an_upstream_error():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.transport.abort()

    async def scenario(server, connections):
        with pytest.raises(UpstreamError, match="closed the connection before answering"):
            await connections.post(server.url, "/v1/completions", b"{}", {})

    run_against(handler, scenario)


def test_a_stream_broken_midway_raises_after_what_came():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        writer.transport.abort()

    async def scenario(server, connections):
        answer = await connections.post(server.url, "/v1/completions", b"{}", {})
        received = []
        with pytest.raises(UpstreamError, match="the connection broke"):
            async for chunk in answer.chunks():
                received.append(chunk)
        assert received == [b"data: 1"]
        answer.release()
        assert not connections._idle.get(connections._origin(server.url))

    run_against(handler, scenario)


def test_a_malformed_answer_is_an_upstream_error():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(server, connections):
        with pytest.raises(UpstreamError, match="malformed"):
            await connections.post(server.url, "/v1/completions", b"{}", {})

    run_against(handler, scenario)


def test_an_answer_without_a_length_ends_with_its_connection():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async def scenario(server, connections):
        answer = await connections.post(server.url, "/v1/completions", b"{}", {})
        assert await answer.read() == b"all of it"
        answer.release()

    run_against(handler, scenario)


def test_a_large_answer_read_slowly_arrives_whole_and_in_order():
    size = 3 * HIGH_WATER_BYTES + 12345  # past the high-water mark: reading pauses and resumes
    payload = bytes(i % 251 for i in range(size))

    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for start in range(0, size, 65536):
            piece = payload[start : start + 65536]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(server, connections):
        answer = await connections.post(server.url, "/v1/completions", b"{}", {})
        await asyncio.sleep(0.2)  # the whole answer offered before the first read
        # reading paused past the mark (one socket read may overshoot it): not all of it buffered
        assert answer._connection.paused and HIGH_WATER_BYTES <= answer._buffered < size
        received = bytearray()
        async for chunk in answer.chunks():
            received += chunk
        assert bytes(received) == payload
        answer.release()

    run_against(handler, scenario)


def test_an_answer_left_before_its_end_closes_the_connection():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        assert await reader.read() == b""  # the client went: the worker would abort its work here
        server.closed_by_client.set()

    async def scenario(server, connections):
        answer = await connections.post(server.url, "/v1/completions", b"{}", {})
        async for _chunk in answer.chunks():
            break
        answer.release()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)
        assert not connections._idle.get(connections._origin(server.url))

    run_against(handler, scenario)


def test_a_request_cancelled_while_waiting_closes_its_connection():
    async def handler(server, reader, writer, _number):
        await server.read_request(reader)
        assert await reader.read() == b""  # never answered; the client leaves
        server.closed_by_client.set()

    async def scenario(server, connections):
        waiting = asyncio.ensure_future(connections.post(server.url, "/v1/completions", b"{}", {}))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(server.closed_by_client.wait(), 2)

    run_against(handler, scenario)
