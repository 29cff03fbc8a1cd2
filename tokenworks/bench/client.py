"""The benchmark's HTTP side: check an OpenAI-compatible endpoint, then stream requests from it.

`probe` asks `GET /v1/models` before a run, so an unreachable endpoint or an unknown model is
a clear error and not a run of failed requests. `OpenAIClient.send` posts one request and fills
its `RequestRecord`; every failure (an HTTP error, a timeout, a broken or malformed stream)
becomes an error record, never an exception. The client shares one aiohttp session, and its
per-chunk path parses each server-sent event with one `json.loads` and one clock read per
network read, so the load generator stays far below the latencies it measures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tokenworks.bench.prompts import PromptTokenizer
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import RequestSpec
from tokenworks.errors import BenchError

PROBE_TIMEOUT_S = 10.0
# json.loads without its Python wrappers: the C scanner on a str, about twice as fast per chunk
_SCAN = json.JSONDecoder().scan_once
_ERROR_TEXT_CHARS = 300  # how much of a non-JSON error body a record keeps


@dataclass(slots=True)
class EndpointInfo:
    base_url: str  # scheme://host[:port][/prefix], without the trailing /v1
    model: str  # the model the run asks for
    models: list[str]  # every model the endpoint lists
    server: str | None  # the Server header, when the endpoint sends one
    max_model_len: int | None  # context length, when the model card says (vLLM, tokenworks)


def api_root(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all name one endpoint."""
    root = base_url.strip().rstrip("/")
    return root.removesuffix("/v1")


def _headers(api_key: str | None) -> dict[str, str]:
    # identity: a compressing proxy would otherwise buffer the stream and hide its timing
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def probe(
    base_url: str, api_key: str | None = None, model: str | None = None, timeout: float = PROBE_TIMEOUT_S
) -> EndpointInfo:
    """Check that the endpoint answers /v1/models and serves `model` (None: its only model)."""
    root = api_root(base_url)
    url = f"{root}/v1/models"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(headers=_headers(api_key), timeout=client_timeout) as session,
            session.get(url) as response,
        ):
            body = await response.read()
            status, server = response.status, response.headers.get("Server")
    except aiohttp.ClientConnectorError as error:
        reason = "connection refused" if isinstance(error.os_error, ConnectionRefusedError) else str(error.os_error)
        raise BenchError(f"cannot reach {url}: {reason}; is the server running?") from None
    except TimeoutError:
        raise BenchError(
            f"{url} did not answer within {timeout:g} s; is the server running and not overloaded?"
        ) from None
    except aiohttp.ClientError as error:
        raise BenchError(f"cannot reach {url}: {error}; is the server running?") from None
    if status in (401, 403):
        raise BenchError(f"{url} answered HTTP {status} ({error_message(body)}); check --api-key")
    if status != 200:
        raise BenchError(
            f"{url} answered HTTP {status} ({error_message(body)}); is this an OpenAI-compatible endpoint?"
        )
    try:
        cards = json.loads(body)["data"]
        ids = [card["id"] for card in cards]
        lengths = {card["id"]: card.get("max_model_len") for card in cards}
        # LoRA adapters are listed with their base as `parent` (vLLM and tokenworks): without
        # --model, the one base model the server serves is the one to measure.
        bases = [card["id"] for card in cards if not card.get("parent")]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BenchError(
            f"{url} did not answer with an OpenAI model list: {body[:120]!r}; is this an OpenAI-compatible endpoint?"
        ) from None
    if model is None:
        if len(bases) != 1:
            listed = ", ".join(ids) or "none"
            raise BenchError(f"{root} serves {len(ids)} models ({listed}); name the one to measure with --model")
        model = bases[0]
    elif model not in ids:
        raise BenchError(f"{root} does not serve the model {model!r}; it serves: {', '.join(ids) or 'none'}")
    return EndpointInfo(root, model, ids, server, lengths.get(model))


def error_message(body: bytes) -> str:
    """The message of an OpenAI error body (or FastAPI's `detail`), else the start of the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:_ERROR_TEXT_CHARS].decode("utf-8", "replace").strip() or "an empty body"
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if parsed.get(key):
                return str(parsed[key])
    return str(parsed)[:_ERROR_TEXT_CHARS]


class StreamError(Exception):
    """The response broke the streaming protocol; its message is what the record says."""


class OpenAIClient:
    """Sends requests to one endpoint and model; use `async with`, then `start_run`, then `send`.

    `enforce_output_length` adds vLLM's `ignore_eos` and `min_tokens = max_tokens` (tokenworks
    serve, vLLM and SGLang accept them) so every request produces exactly what it asked for.
    With a tokenizer, chunks without per-chunk usage are counted by it, and every reply is
    counted for the usage cross-check (`tokenizer_output_tokens`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        stream: bool = True,
        enforce_output_length: bool = True,
        temperature: float | None = None,  # None: not sent (the server's default)
        tokenizer: PromptTokenizer | None = None,
        connections: int | None = None,  # None: no limit (an open loop must never queue in the client)
    ) -> None:
        root = api_root(base_url)
        self.urls = {"chat": f"{root}/v1/chat/completions", "completions": f"{root}/v1/completions"}
        self.model, self.api_key, self.stream = model, api_key, stream
        self.enforce_output_length = enforce_output_length
        self.temperature = temperature
        self.tokenizer = tokenizer
        self.connections = connections
        self.origin = time.perf_counter()  # records' times are seconds since this instant
        self.timeout = 600.0
        self._client_timeout = aiohttp.ClientTimeout(total=self.timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OpenAIClient:
        connector = aiohttp.TCPConnector(limit=self.connections or 0, limit_per_host=0, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(connector=connector, headers=_headers(self.api_key))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def start_run(self, timeout: float) -> float:
        """Start the run's clock (returned, in perf_counter seconds) and set the per-request timeout."""
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self.origin = time.perf_counter()
        return self.origin

    def body(self, spec: RequestSpec) -> bytes:
        body: dict[str, Any] = {"model": self.model, "stream": self.stream}
        if spec.api == "chat":
            body["messages"] = spec.messages
        else:
            body["prompt"] = spec.prompt
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if spec.max_tokens is not None:
            body["max_tokens"] = spec.max_tokens
            if self.enforce_output_length:
                body["ignore_eos"] = True
                body["min_tokens"] = spec.max_tokens
        if (
            spec.session is not None
        ):  # OpenAI's end-user id: a router's session affinity keeps the conversation together
            body["user"] = f"session-{spec.session}"
        if self.stream:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return json.dumps(body).encode()

    async def send(self, spec: RequestSpec, record: RequestRecord) -> str | None:
        """Send one request and fill `record`; the reply's text, or None when the request failed."""
        assert self._session is not None, "use the client inside `async with`"
        data = self.body(spec)
        record.sent = time.perf_counter() - self.origin
        try:
            async with self._session.post(self.urls[spec.api], data=data, timeout=self._client_timeout) as response:
                record.http_status = response.status
                if response.status >= 400:
                    return _fail(record, f"HTTP {response.status}: {error_message(await response.read())}")
                if self.stream:
                    text, usage = await self._read_stream(response, spec.api == "chat", record)
                else:
                    text, usage = await self._read_whole(response, spec.api == "chat", record)
        except TimeoutError:
            return _fail(record, f"no complete answer within the {self.timeout:g} s timeout")
        except aiohttp.ClientConnectorError as error:
            return _fail(record, f"cannot connect: {error.os_error}")
        except aiohttp.ClientPayloadError as error:
            return _fail(record, f"the connection broke mid-response: {error}")
        except aiohttp.ClientError as error:
            return _fail(record, f"connection lost: {error}")
        except StreamError as error:
            return _fail(record, str(error))
        except Exception as error:  # faults are data: a record says what happened, the run goes on
            return _fail(record, f"unexpected {type(error).__name__}: {error}")
        self._count_tokens(spec, record, text, usage)
        return text

    async def _read_stream(
        self, response: aiohttp.ClientResponse, chat: bool, record: RequestRecord
    ) -> tuple[str, dict | None]:
        """Read server-sent events to the end of the body; (text, the last usage seen).

        This is the per-chunk hot path: one clock read per network read (events that arrive
        together share it), one JSON parse per event by the C scanner, and locals only.
        """
        origin, scan = self.origin, _SCAN
        count = self.tokenizer.count if self.tokenizer is not None else None
        times, tokens, parts = record.chunk_times, record.chunk_tokens, []
        usage: dict | None = None
        completed = 0  # cumulative completion tokens at the last content chunk (continuous usage)
        buffer, done, events_seen = b"", False, 0
        stream = response.content
        while True:
            data = await stream.readany()
            if data:
                now = time.perf_counter() - origin
                if buffer:
                    data = buffer + data
                if b"\r" in data:  # SSE allows CRLF line ends; a split CRLF waits in the buffer
                    data = data.replace(b"\r\n", b"\n")
                events = data.split(b"\n\n")
                buffer = events.pop()
            elif buffer.strip():  # the body ended without the blank line after its last event
                events, buffer = [buffer], b""
            else:
                break
            for event in events:
                if done:
                    continue
                if event[:6] == b"data: " and b"\n" not in event:
                    payload = event[6:]
                else:
                    payload = _event_data(event)
                    if payload is None:  # a comment or keep-alive
                        continue
                events_seen += 1
                if payload == b"[DONE]":
                    done = True
                    continue
                try:
                    chunk = scan(payload.decode(), 0)[0]
                    choices = chunk.get("choices")
                except (ValueError, StopIteration, AttributeError):
                    raise StreamError(f"a stream chunk is not a JSON object: {payload[:80]!r}") from None
                if "error" in chunk:
                    raise StreamError(f"error event mid-stream: {error_message(payload)}")
                chunk_usage = chunk.get("usage")
                if chunk_usage:
                    usage = chunk_usage
                if not choices:
                    continue
                if chat:
                    delta = choices[0].get("delta")
                    text = delta.get("content") if delta else None
                    if not text and delta:  # reasoning models stream their thinking first
                        text = delta.get("reasoning_content") or delta.get("reasoning")
                else:
                    text = choices[0].get("text")
                if not text:
                    continue
                if not times:
                    record.first_token = now
                times.append(now)
                parts.append(text)
                completion = chunk_usage.get("completion_tokens") if chunk_usage else None
                if completion is not None:
                    # tokens of contentless chunks since the last content chunk (a partial
                    # character, a skipped special token) belong to this one
                    tokens.append(completion - completed)
                    completed = completion
                else:
                    tokens.append(count(text) if count is not None else 1)
        if not done:
            content_type = response.headers.get("Content-Type", "none")
            if events_seen == 0 and not content_type.startswith("text/event-stream"):
                raise StreamError(f"the answer is not an event stream (Content-Type: {content_type})")
            raise StreamError("the stream ended before data: [DONE]")
        if times:
            record.last_token = times[-1]
        return "".join(parts), usage

    async def _read_whole(
        self, response: aiohttp.ClientResponse, chat: bool, record: RequestRecord
    ) -> tuple[str, dict | None]:
        """A non-streaming answer: first and last token are the moment the whole body arrived."""
        body = await response.read()
        now = time.perf_counter() - self.origin
        try:
            answer = json.loads(body)
            choice = answer["choices"][0]
            text = (choice["message"].get("content") if chat else choice["text"]) or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise StreamError(f"the answer is not an OpenAI completion: {body[:80]!r}") from None
        usage = answer.get("usage")
        record.first_token = record.last_token = now
        record.chunk_times.append(now)
        if usage and usage.get("completion_tokens") is not None:
            record.chunk_tokens.append(usage["completion_tokens"])
        else:
            record.chunk_tokens.append(self.tokenizer.count(text) if self.tokenizer is not None else 1)
        return text, usage

    def _count_tokens(self, spec: RequestSpec, record: RequestRecord, text: str, usage: dict | None) -> None:
        """n_in and n_out from the server's usage, else the tokenizer, else the chunk counts."""
        tokenizer = self.tokenizer
        if tokenizer is not None:
            record.tokenizer_output_tokens = tokenizer.count(text)
        if usage and usage.get("completion_tokens") is not None:
            record.output_tokens = usage["completion_tokens"]
            record.input_tokens = usage.get("prompt_tokens", spec.input_tokens_hint)
            record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            record.token_source = "usage"
        elif tokenizer is not None:
            record.output_tokens = record.tokenizer_output_tokens
            record.input_tokens = (
                tokenizer.count_chat(spec.messages) if spec.api == "chat" else tokenizer.count(spec.prompt)
            )
            record.token_source = "tokenizer"
        else:
            record.output_tokens = sum(record.chunk_tokens)
            record.input_tokens = spec.input_tokens_hint
            record.token_source = "chunks"


def _event_data(event: bytes) -> bytes | None:
    """The data of an event in the general form: several lines, `data:` without a space, comments."""
    lines = []
    for line in event.split(b"\n"):
        field, _, value = line.partition(b":")
        if field == b"data":
            lines.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(lines) if lines else None


def _fail(record: RequestRecord, error: str) -> None:
    record.status = "error"
    record.error = error
    return None
