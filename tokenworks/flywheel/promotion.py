"""Promotion and rollback that reach the serving endpoint: record in the registry, then hot swap.

The registry is the record and the endpoint follows it: a version is checked to be swappable
(a LoRA adapter) before anything is written, the alias moves, then the adapter is loaded behind
the served name (swap.py). If the endpoint refuses or cannot be reached, the alias is moved back
with the failure as the reason, so the registry never claims a version the endpoint does not
serve; both moves stay in the promotion log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenworks.flywheel.registry import CHAMPION, FLYWHEEL_ACTOR, LogEntry, Registry
from tokenworks.flywheel.swap import SwapError, check_swappable, serve_version


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the champion is served: a server or router URL, and the name clients ask for."""

    url: str
    served_name: str
    api_key: str | None = None


def promote(
    registry: Registry, version: int, alias: str = CHAMPION, *, endpoint: Endpoint | None = None,
    actor: str = FLYWHEEL_ACTOR, reason: str = "", evaluation: dict[str, Any] | None = None,
) -> LogEntry:  # fmt: skip
    """Point the alias at the version; with an endpoint, serve it there behind the served name."""
    if endpoint is not None:
        check_swappable(registry.get(version))
    entry = registry.promote(version, alias, actor=actor, reason=reason, evaluation=evaluation)
    if endpoint is not None:
        _serve_or_undo(registry, endpoint, entry, actor)
    return entry


def rollback(
    registry: Registry, alias: str = CHAMPION, *, endpoint: Endpoint | None = None, actor: str = FLYWHEEL_ACTOR,
    reason: str = "",
) -> LogEntry:  # fmt: skip
    """Point the alias back at the version it held before; with an endpoint, serve that one there."""
    if endpoint is not None:
        held = registry.lineage(alias)
        if len(held) >= 2:  # else registry.rollback says why there is nothing to roll back to
            check_swappable(registry.get(held[-2]))
    entry = registry.rollback(alias, actor=actor, reason=reason)
    if endpoint is not None:
        _serve_or_undo(registry, endpoint, entry, actor)
    return entry


def _serve_or_undo(registry: Registry, endpoint: Endpoint, entry: LogEntry, actor: str) -> None:
    assert entry.to_version is not None and entry.alias is not None
    try:
        serve_version(endpoint.url, endpoint.served_name, registry.get(entry.to_version), endpoint.api_key)
    except SwapError as error:
        if entry.from_version is None:  # a first promotion: there is nothing to move the alias back to
            raise SwapError(
                f"hot swap to version {entry.to_version} failed ({error}); {entry.alias} is recorded as version "
                f"{entry.to_version} but not served: load it there (POST /v1/load_lora_adapter) once the endpoint is up"
            ) from None
        why = f"hot swap to version {entry.to_version} failed, so the alias went back: {error}"
        if entry.action == "promote":
            registry.rollback(entry.alias, actor=actor, reason=why)
        else:
            registry.promote(entry.from_version, entry.alias, actor=actor, reason=why)
        raise SwapError(why) from None
