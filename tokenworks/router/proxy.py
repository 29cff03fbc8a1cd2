"""Forwarding one request: pick a worker, send the body as it came, pass the answer back.

A worker that cannot be reached, resets the connection, or answers 502/503/504 before the
router has passed anything on is marked failed (its breaker opens) and the request goes to
another, up to MAX_ATTEMPTS workers; a request no worker could take is a 503 naming why. A
worker's 4xx is the client's answer and passes through. Once a stream has started it stays with
its worker: if the worker breaks it, the client gets an OpenAI error event and `[DONE]`, never a
silent end. A client that leaves closes the upstream request, so the worker aborts its work.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from starlette.responses import Response

from tokenworks.router.adapters import AdapterTable
from tokenworks.router.flight import Flight
from tokenworks.router.metrics import RouterMetrics
from tokenworks.router.policies import Policy, RoutedRequest
from tokenworks.router.upstream import UpstreamError, UpstreamResponse, WorkerConnections
from tokenworks.router.workers import Worker, WorkerPool
from tokenworks.serve.errors import APIError, error_body
from tokenworks.serve.pretokenized import HEADER as PROMPT_TOKENS_HEADER
from tokenworks.serve.streaming import DONE, EventStream

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RETRIED_STATUSES = frozenset({502, 503, 504})
CONNECT_TIMEOUT_S = 2.0
FEEDBACK_TIMEOUT_S = 15.0  # a worker's log writer has 10 s to store it (serve/feedback.py)
TOKENIZATION_TIMEOUT_S = 30.0  # a long prompt, on a worker busy generating
WORKER_HEADER = "X-Tokenworks-Worker"  # which worker answered (for people and tests)
FORWARDED_HEADERS = ("content-type", "accept", "x-session-id", "x-request-id")


async def forward(
    path: str, raw_body: bytes, routed: RoutedRequest, pool: WorkerPool, policy: Policy,
    connections: WorkerConnections, metrics: RouterMetrics, adapters: AdapterTable,
) -> Response:  # fmt: skip
    """The answer to one generation request, from the first worker that takes it. Cancelling it
    (a client gone) drops the request to the worker, which then aborts its work."""
    headers = {name: routed.headers[name] for name in FORWARDED_HEADERS if name in routed.headers}
    tried: set[str] = set()
    reasons: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        candidates = adapters.eligible(routed.body.get("model"), pool.candidates(tried))
        if not candidates:
            break
        worker = policy.choose(routed, candidates)
        metrics.decisions.labels(policy.name, worker.url, routed.reason).inc()
        if tried:
            metrics.failovers.inc()
        tried.add(worker.id)
        flight = Flight(worker, routed, metrics, getattr(policy, "output_tokens_seen", None))
        answer = None
        try:
            sent_headers = _with_tokens(headers, routed, worker)
            answer = await _attempt(path, raw_body, sent_headers, flight, connections, metrics, reasons)
        finally:
            if answer is None:  # failed, or cancelled (its client left): the stream's own close ends it otherwise
                flight.abandoned()
        if answer is not None:
            return answer
    metrics.no_worker.inc()
    raise _no_worker(reasons)


async def _attempt(
    path: str, raw_body: bytes, headers: dict[str, str], flight: Flight, connections: WorkerConnections,
    metrics: RouterMetrics, reasons: list[str],
) -> Response | None:  # fmt: skip
    """The worker's answer, or None when it failed before anything was passed on (marked failed,
    its reason in `reasons`), so that another worker may take the request."""
    worker = flight.worker
    try:
        upstream = await connections.post(worker.url, path, raw_body, headers)
    except UpstreamError as error:
        _fail(worker, str(error), reasons)
        return None
    streaming = False
    try:
        if upstream.status in RETRIED_STATUSES:
            text = (await upstream.read()).decode(errors="replace")
            _fail(worker, f"answered {upstream.status} {text[:200]}", reasons)
            return None
        if upstream.content_type == "text/event-stream":
            worker.succeeded()
            metrics.requests.labels(worker.url, str(upstream.status)).inc()
            streaming = True
            stream = EventStream(_relay(upstream, flight, metrics), on_close=lambda: _stream_closed(flight, upstream))
            stream.raw_headers.append((WORKER_HEADER.lower().encode(), worker.id.encode()))
            return stream
        data = await upstream.read()
    except UpstreamError as error:  # nothing passed on yet: another may answer
        _fail(worker, f"broke its answer: {error}", reasons)
        return None
    finally:
        if not streaming:
            upstream.release()
    worker.succeeded()
    worker.served += 1
    metrics.requests.labels(worker.url, str(upstream.status)).inc()
    flight.ended(data if upstream.status == 200 else None)
    media_type = upstream.content_type or None
    return Response(data, upstream.status, {WORKER_HEADER: worker.id}, media_type=media_type)


async def _relay(upstream: UpstreamResponse, flight: Flight, metrics: RouterMetrics) -> AsyncIterator[str]:
    """The worker's stream as it comes; a break becomes an error event and [DONE]."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    worker = flight.worker
    try:
        async for chunk in upstream.chunks():
            text = decoder.decode(chunk)
            if text:
                flight.streamed(text)
                yield text
        worker.served += 1
        flight.ended()
    except UpstreamError as error:
        worker.failed(f"broke a stream: {error}")
        metrics.broken_streams.labels(worker.url).inc()
        message = f"the worker serving this stream failed ({error}); the answer is incomplete"
        yield f"data: {json.dumps(error_body(502, message, code='worker_failed'))}\n\n"
        yield DONE


def _stream_closed(flight: Flight, upstream: UpstreamResponse) -> None:
    flight.abandoned()  # nothing, when it ended whole
    upstream.release()  # an unfinished one closes its connection: the worker sees the client go


async def forward_tokenization(
    path: str, raw_body: bytes, candidates_of: Callable[[set[str]], list[Worker]], session: aiohttp.ClientSession
) -> Response:
    """POST /tokenize or /detokenize (vLLM's routes, serve/tokenization.py), answered by the least
    busy worker that may serve the body's model: every worker of a fleet has the same tokenizer and
    nothing is generated, so no policy weighs it, and it counts in no worker's load. A worker that
    cannot be reached or answers 502-504 is marked failed and the next one is asked, as for a
    generation request; its 4xx is the client's answer."""
    tried: set[str] = set()
    reasons: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        candidates = candidates_of(tried)
        if not candidates:
            break
        worker = min(candidates, key=lambda candidate: candidate.in_flight)
        tried.add(worker.id)
        timeout = aiohttp.ClientTimeout(total=TOKENIZATION_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        try:
            headers = {"content-type": "application/json"}
            async with session.post(f"{worker.url}{path}", data=raw_body, headers=headers, timeout=timeout) as up:
                data = await up.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            _fail(worker, f"{type(error).__name__}: {error}", reasons)
            continue
        if up.status in RETRIED_STATUSES:
            _fail(worker, f"answered {up.status} {data[:200].decode(errors='replace')}", reasons)
            continue
        worker.succeeded()
        return Response(data, up.status, {WORKER_HEADER: worker.id}, media_type=up.content_type)
    raise _no_worker(reasons)


async def forward_feedback(raw_body: bytes, workers: list[Worker], session: aiohttp.ClientSession) -> Response:
    """POST /v1/feedback (the request log's, serve/feedback.py) to each worker in turn, until one
    knows the answer it names: the router does not remember which worker gave which answer, and
    workers that share one log file (`serve --workers N --log-db`) see each other's answers once
    committed, so the first one that does not answer 404 decides (a 400 for a malformed body
    comes from the first)."""
    answer: Response | None = None
    for worker in workers:
        try:
            timeout = aiohttp.ClientTimeout(total=FEEDBACK_TIMEOUT_S)
            headers = {"content-type": "application/json"}
            async with session.post(f"{worker.url}/v1/feedback", data=raw_body, headers=headers, timeout=timeout) as up:
                answer = Response(await up.read(), up.status, media_type=up.content_type)
        except (aiohttp.ClientError, TimeoutError):
            continue  # its health checks will see to it; another may hold the answer
        if answer.status_code != 404:
            return answer
    if answer is None:
        raise APIError(503, "no worker could take the feedback", code="no_worker", headers={"Retry-After": "1"})
    return answer  # every worker's 404: an unknown request id (or no worker keeps a log)


def _with_tokens(headers: dict[str, str], routed: RoutedRequest, worker: Worker) -> dict[str, str]:
    """The headers for this worker: with the prompt's token ids when it has the router's tokenizer
    (so it need not tokenize the prompt again: serve/pretokenized.py)."""
    if routed.tokens_header is None or worker.tokenizer != routed.tokens_header[0]:
        return headers
    return {**headers, PROMPT_TOKENS_HEADER: routed.tokens_header[1]}


def _no_worker(reasons: list[str]) -> APIError:
    why = "; ".join(reasons) if reasons else "every worker is down or was tried"
    return APIError(503, f"no worker could take the request ({why})", code="no_worker", headers={"Retry-After": "1"})


def _fail(worker: Worker, reason: str, reasons: list[str]) -> None:
    worker.failed(reason)
    reasons.append(f"{worker.url}: {reason}")
