"""Bearer API key on the generation and tokenizer routes, when the server has one.

As vLLM does: /v1/*, /tokenize and /detokenize need `Authorization: Bearer KEY`;
/health, /metrics, the schema and the dashboard (/dashboard, which shows what /metrics
does) stay open for probes, scrapers and browsers.
"""

from __future__ import annotations

import hmac

from tokenworks.serve.errors import error_response

PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str, prefixes: tuple[str, ...] = PROTECTED_PREFIXES) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.prefixes = prefixes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization")
        if given is None or not hmac.compare_digest(given, self.expected):
            reason = "no API key was given" if given is None else "the API key is not valid"
            message = f"{reason}: send the server's key as the header 'Authorization: Bearer KEY'"
            response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
