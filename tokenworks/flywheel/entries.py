"""One request as the server hands it to the log, and the row it becomes.

The server builds a `LoggedRequest` on its event loop from what it already holds (the parsed body,
the answer it sent, a few times) and nothing more; serialising the payloads to JSON and
redacting them happens in the writer's thread (`to_row`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenworks.data.pii import redact_pii


@dataclass(slots=True)
class LoggedRequest:
    request_id: str
    created: float  # Unix time of arrival
    endpoint: str  # completions or chat.completions
    request: Any  # the body: a dict, or a pydantic model (dumped as the client set it)
    response: dict | None  # the answer; None for a failure
    status: str = "ok"  # ok or error
    http_status: int = 200
    error: str | None = None
    model: str | None = None  # as requested
    served_model: str | None = None
    adapter: str | None = None
    adapter_path: str | None = None
    workload_id: str | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    mean_logprob: float | None = None
    min_logprob: float | None = None


def to_row(entry: LoggedRequest, redact: bool) -> tuple:
    """The `requests` row (store.REQUEST_COLUMNS' order) of an entry, its strings redacted if asked."""
    request = (
        entry.request.model_dump(mode="json", exclude_unset=True)
        if hasattr(entry.request, "model_dump")
        else entry.request
    )
    response = entry.response
    if redact:
        request, response = redacted(request), redacted(response)
    usage = (response or {}).get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    finish_reasons = [choice.get("finish_reason") for choice in (response or {}).get("choices", [])]
    return (
        entry.request_id, entry.created, entry.endpoint, entry.status, entry.http_status,
        redacted(entry.error) if redact else entry.error, entry.model, entry.served_model, entry.adapter,
        entry.adapter_path, entry.workload_id, usage.get("prompt_tokens"), usage.get("completion_tokens"),
        details.get("cached_tokens"), entry.ttft_s, entry.tpot_s, entry.e2e_s,
        json.dumps(finish_reasons) if response is not None else None, entry.mean_logprob, entry.min_logprob,
        _json(request), _json(response),
    )  # fmt: skip


def redacted(value: Any) -> Any:
    """Every string inside `value` (dicts, lists) with e-mail addresses, phone numbers and IP
    addresses replaced by the ingest redactor's placeholders; the structure left as it is, so
    the payload stays the JSON it was (redacting serialised JSON text could cut through its syntax)."""
    if isinstance(value, str):
        return redact_pii(value).text
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
