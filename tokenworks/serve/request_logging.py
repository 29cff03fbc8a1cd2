"""The request log's hook in the generation endpoints: one trace per request, when --log-db is on.

A handler opens a trace (`trace_request`), lets it watch its choices as they stream from the
engine (`watch`: the first token's time, the final outputs, their logprobs), and hands it the
answer it sent, or, for a stream, a function that builds the answer a non-streamed call would
have returned (`answered`). A failure ends the trace as an error row: one the handler raised
(errors.py's handlers report it), one from the engine (seen by `watch`), or a client that left.
Each trace puts exactly one entry on the log's queue and nothing here waits on the writer. Without
--log-db every handler gets `UNTRACED`, whose `watch` hands the choices back untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request

from tokenworks.engine import EngineDeadError, RequestOutput
from tokenworks.flywheel.entries import LoggedRequest
from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import new_id

Choices = AsyncIterator[tuple[int, RequestOutput]]


class RequestTrace:
    """One request on its way into the request log."""

    def __init__(self, raw_request: Request, body, endpoint: str) -> None:
        state = raw_request.app.state.server
        self.writer, self.state, self.body, self.endpoint = state.request_log, state, body, endpoint
        self.arrival, self.created = time.monotonic(), time.time()
        self.workload_id = raw_request.headers.get("x-workload-id") or getattr(body, "user", None)
        self.request_id: str | None = None
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.finals: dict[int, RequestOutput] = {}
        self.done = False

    async def watch(self, request_id: str, choices: Choices) -> Choices:
        """`choices`, passed through; closing this closes them (a client gone aborts the engine requests)."""
        self.request_id = request_id
        complete = False
        async with contextlib.aclosing(choices):
            try:
                async for index, output in choices:
                    now = time.monotonic()
                    if output.delta_token_ids or output.finished:
                        self.first_token = self.first_token or now
                        self.last_token = now
                    if output.finished:
                        self.finals[index] = output
                    yield index, output
                complete = True
            except Exception as error:
                self.failed(*_status_of(error))
                raise
            finally:
                if not complete:
                    self.failed(499, "the client disconnected before the answer was complete")

    def answered(self, answer: dict | Callable[[], dict]) -> None:
        """The answer sent (or, for a stream, a function building it once the stream is done)."""
        if self.done:
            return
        self.done = True
        answer = answer() if callable(answer) else answer
        served = answer.get("model")
        adapter = served if served != self.state.config.model_name else None
        tokens = sum(len(output.token_ids) for output in self.finals.values())
        scored = [output for output in self.finals.values() if output.cumulative_logprob is not None]
        tpot = None
        longest = max((len(output.token_ids) for output in self.finals.values()), default=0)
        if longest > 1 and self.first_token is not None:
            tpot = (self.last_token - self.first_token) / (longest - 1)
        self.writer.put(
            LoggedRequest(
                request_id=answer["id"],
                created=self.created,
                endpoint=self.endpoint,
                request=self.body,
                response=answer,
                model=self.body.model,
                served_model=served,
                adapter=adapter,
                adapter_path=self.state.engine.loras.get(adapter) if adapter else None,
                workload_id=self.workload_id,
                ttft_s=None if self.first_token is None else self.first_token - self.arrival,
                tpot_s=tpot,
                e2e_s=time.monotonic() - self.arrival if self.last_token is None else self.last_token - self.arrival,
                mean_logprob=sum(o.cumulative_logprob for o in scored) / tokens if scored and tokens else None,
                min_logprob=min((o.min_logprob for o in scored if o.min_logprob is not None), default=None),
            )
        )

    def failed(self, status: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        prefix = "chatcmpl" if self.endpoint == "chat.completions" else "cmpl"
        self.writer.put(
            LoggedRequest(
                request_id=self.request_id or new_id(prefix),
                created=self.created,
                endpoint=self.endpoint,
                request=self.body,
                response=None,
                status="error",
                http_status=status,
                error=message,
                model=getattr(self.body, "model", None),
                workload_id=self.workload_id,
                e2e_s=time.monotonic() - self.arrival,
            )
        )


class Untraced:
    """What handlers get when the server keeps no log: nothing recorded, nothing wrapped."""

    def watch(self, request_id: str, choices: Choices) -> Choices:
        return choices

    def answered(self, answer: dict | Callable[[], dict]) -> None:
        pass

    def failed(self, status: int, message: str) -> None:
        pass


UNTRACED = Untraced()


def trace_request(raw_request: Request, body, endpoint: str) -> RequestTrace | Untraced:
    """The request's trace, kept on the request for errors.py to report a failure to (`report_failure`)."""
    if raw_request.app.state.server.request_log is None:
        return UNTRACED
    trace = RequestTrace(raw_request, body, endpoint)
    raw_request.scope["tokenworks.request_trace"] = trace  # the scope, not request.state: no object to make
    return trace


def _status_of(error: BaseException) -> tuple[int, str]:
    if isinstance(error, APIError):
        return error.status, error.message
    if isinstance(error, EngineDeadError):
        return 503, f"the engine is not available: {error}"
    return (400 if isinstance(error, ValueError) else 500), str(error) or type(error).__name__
