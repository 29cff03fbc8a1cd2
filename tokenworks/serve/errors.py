"""Every failure as OpenAI's error object, with the status that says whose fault it is.

`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`: malformed JSON and
wrong types 400, unknown model 404, body too large 413, queue full 429 (with Retry-After),
engine down 503. A bug still answers with this object (500) and never with a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenworks.engine import EngineDeadError
from tokenworks.errors import TokenizerError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
}  # fmt: skip


class APIError(Exception):
    """An error a handler raises to answer with a given status and OpenAI error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


@contextlib.contextmanager
def bad_request() -> Iterator[None]:
    """Our own checks and the engine's raise ValueError (or TokenizerError): a 400."""
    try:
        yield
    except (ValueError, TokenizerError) as error:
        raise APIError(400, str(error)) from None


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def api_error_of(error: BaseException) -> APIError:
    """The API error for an exception from the engine or our own checks."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineDeadError):
        return APIError(503, f"the engine is not available: {error}", code="engine_unavailable")
    if isinstance(error, ValueError | TokenizerError):
        return APIError(400, str(error))
    logger.exception("unexpected error while serving a request", exc_info=error)
    return APIError(500, "internal server error: the server failed on this request; its log has the details")


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = error.errors()
    if not problems:
        return "the request body is invalid", None
    first = problems[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg', '')}".rstrip(": "), None
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "missing" and param:
        message = f"{param} is required"
    elif first.get("type") == "extra_forbidden" and param:
        message = f"{param} is not supported by this server; leave it out (it would not be honoured)"
    elif param:
        message = f"{param}: {first.get('msg', 'invalid value')}"
    else:
        message = f"the request body is invalid: {first.get('msg', '')}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message, param


def _report_to_trace(request: Request, status: int, message: str) -> None:
    """A generation request traced for the request log (request_logging.py) is logged as failed."""
    trace = request.scope.get("tokenworks.request_trace")
    if trace is not None:
        trace.failed(status, message)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        _report_to_trace(request, error.status, error.message)
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}: see GET /openapi.json for the routes"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        code = "request_too_large" if error.status_code == 413 else None
        return error_response(error.status_code, message, code=code, headers=getattr(error, "headers", None))

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, error: EngineDeadError) -> JSONResponse:
        api = api_error_of(error)
        _report_to_trace(request, api.status, api.message)
        return error_response(api.status, api.message, code=api.code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        api = api_error_of(error)
        _report_to_trace(request, api.status, api.message)
        return error_response(api.status, api.message, code=api.code)


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit; an HTTPException so FastAPI passes it on."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over {max_bytes} bytes; this server accepts at most {max_bytes}")


class BodySizeLimitMiddleware:
    """Refuses bodies over a size with 413: at once from Content-Length, else while reading."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self, size: str) -> JSONResponse:
        message = f"the request body is {size}; this server accepts at most {self.max_bytes} bytes"
        return error_response(413, message, code="request_too_large")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refusal(f"{int(declared)} bytes")(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refusal(f"over {self.max_bytes} bytes")(scope, receive, send)


def json_error_event(error: BaseException) -> str:
    """An error in the middle of a stream, as one more server-sent event."""
    api = api_error_of(error)
    return f"data: {json.dumps(error_body(api.status, api.message, api.param, api.code))}\n\n"
