"""The router's HTTP/1.1 client for the requests it forwards to workers.

A generation request's way through the router is on its client's clock (the TTFT the router
adds), and the forwarding client was the largest part of it: aiohttp took 0.23 ms more than a
bare write from the call to the worker reading the request, and 0.32 ms more for a whole small
exchange, with the caches cold as they are at concurrency 1 (docs/benchmarks.md, Router,
session 21). This client does only what forwarding needs: a POST of bytes already encoded, over
kept-alive connections per worker, its answer parsed by httptools (llhttp, in C: uvicorn's
parser) and handed over as it comes. The router's other calls stay on aiohttp: its own (health,
models, KV event discovery, adapters), where nobody waits, and the feedback and tokenization
routes it forwards, which are not on a stream's first token.

A connection kept alive may have been closed by the worker while it sat idle (uvicorn closes
them after 5 s): a request on one that ends before any byte of the answer is sent again once on
a new connection, as browsers do (the worker did not read it). An answer left before its end
closes its connection, so the worker sees its client go and aborts the work.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

HIGH_WATER_BYTES = 256 * 1024  # an answer read ahead of its consumer: reading pauses above this


class UpstreamError(Exception):
    """The worker could not be reached, or broke its answer (a reset, a malformed response)."""


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool
    prefix: str  # a path the worker's URL has before /v1 ("" for most)
    host_header: str


class WorkerConnections:
    """Kept-alive connections to the workers, by worker URL, and the POST that uses them."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[_Origin, list[_Connection]] = collections.defaultdict(list)
        self._open: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send `body` to `url` + `path` and wait for the answer's status and headers;
        UpstreamError when the worker cannot be reached or breaks the answer before them."""
        origin = self._origin(url)
        request = _encode_request(origin, path, body, headers)
        connection = self._idle_connection(origin)
        if connection is not None:
            try:
                return await connection.exchange(request)
            except _ClosedBeforeAnswer:
                pass  # closed by the worker while idle: once more, on a new connection
        connection = await self._connect(origin)
        try:
            return await connection.exchange(request)
        except _ClosedBeforeAnswer as closed:
            raise UpstreamError(f"the worker closed the connection before answering ({closed})") from None

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            origin = _Origin(parts.hostname or "localhost", port, tls, parts.path.rstrip("/"), parts.netloc)
            self._origins[url] = origin
        return origin

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        if origin.tls and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port,
                    ssl=self._tls if origin.tls else None,
                )  # fmt: skip
        except TimeoutError:
            raise UpstreamError(f"no connection within {self.connect_timeout_s:g} s") from None
        except OSError as error:
            raise UpstreamError(f"cannot connect: {error.strerror or error}") from None
        return connection

    def _opened(self, connection: _Connection) -> None:
        self._open.add(connection)

    def _closed(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def _reuse(self, connection: _Connection) -> None:
        self._idle[connection.origin].append(connection)


class UpstreamResponse:
    """A worker's answer: status and headers at once, the body as it comes."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_type = ""  # the media type, lower case, without parameters ("" when none)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive; UpstreamError when the worker breaks it off."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < HIGH_WATER_BYTES:
                    self._connection.resume_reading()
                yield chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with the answer: its connection is kept for another request when the answer was
        read to its end, and closed otherwise (the worker then sees its client gone)."""
        if self._released:
            return
        self._released = True
        self._connection.released(self._complete and not self._chunks and self._error is None)

    # ---- fed by the connection ----------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= HIGH_WATER_BYTES:
            self._connection.pause_reading()
        self._wake()

    def _end(self, error: UpstreamError | None = None) -> None:
        if error is None:
            self._complete = True
        elif not self._complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _ClosedBeforeAnswer(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a worker, one exchange at a time."""

    def __init__(self, pool: WorkerConnections, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.until_eof = False  # an answer with neither a length nor chunks: its body ends with the connection
        self.closed = False
        self.paused = False

    @property
    def reusable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, request: bytes) -> UpstreamResponse:
        """Write the request and wait for the answer's headers."""
        assert self.transport is not None and self.response is None
        self.response = UpstreamResponse(self)
        self.headers_ready = asyncio.get_running_loop().create_future()
        self.keep_alive = False
        self.transport.write(request)
        try:
            await self.headers_ready
        except BaseException:
            self.close()  # cancelled (its client left) or failed: the worker sees the connection go
            raise
        return self.response

    def released(self, whole: bool) -> None:
        self.response = None
        if whole and self.keep_alive and self.reusable:
            self.pool._reuse(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool._opened(self)

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing was asked: a worker that talks out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamError(f"a malformed answer ({error})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._closed(self)
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(_ClosedBeforeAnswer(str(exc) if exc else "end of stream"))
        elif self.response is not None and self.until_eof and exc is None:
            self.response._end()
        elif self.response is not None:
            self._fail(UpstreamError(f"the connection broke ({exc or 'end of stream'})"))

    # ---- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self.headers_ready is not None
        response.status = self.parser.get_status_code()
        delimited = response.status < 200 or response.status in (204, 304)
        for name, value in response.headers:
            if name == b"content-type":
                response.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif name in (b"content-length", b"transfer-encoding"):
                delimited = True
        self.keep_alive = self.parser.should_keep_alive()
        self.until_eof = not delimited
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._end()

    def _fail(self, error: UpstreamError) -> None:
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(error)
        elif self.response is not None:
            self.response._end(error)


def _encode_request(origin: _Origin, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {origin.prefix}{path} HTTP/1.1", f"host: {origin.host_header}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
