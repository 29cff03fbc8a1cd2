"""Which worker a request goes to: the routing policies.

A policy sees the request (its body and headers, as `RoutedRequest`) and the candidate workers
(available, not yet tried by this request) and picks one; it never waits. Load is the router's
own count of a worker's requests in flight.
- `round-robin`: each in turn.
- `least-load`: the fewest requests in flight (ties in turn).
- `p2c`: the less loaded of two picked at random (power of two choices): near least-load's
  balance without every router herding onto the same idle worker.
- `session`: requests of one session (`X-Session-ID` header, else the body's `user`) go where
  that session went last, while the worker is a candidate and the session was seen within its
  TTL; other requests, and a session's first, by least load.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tokenworks.router.workers import Worker

SESSION_HEADER = "x-session-id"
SESSION_TTL_S = 600.0


@dataclass(slots=True)
class RoutedRequest:
    body: dict
    headers: dict[str, str]  # lower-case names
    tokens: list[int] | None = None  # the prompt's token ids, when the router could make them out
    # (tokenizer fingerprint, header) that hands those ids to a worker with that tokenizer
    tokens_header: tuple[str, str] | None = None
    reason: str = ""  # why the policy chose its worker (metrics)
    predicted_cached_tokens: int | None = None  # the kv policy's expectation of the worker's prefix hit
    uncached_tokens: int = 0  # the prefill the chosen worker has to do, as the policy sees it

    @property
    def max_tokens(self) -> int | None:
        value = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return value if isinstance(value, int) and value >= 0 else None

    @property
    def session(self) -> str | None:
        key = self.headers.get(SESSION_HEADER) or self.body.get("user")
        return key if isinstance(key, str) and key else None


class Policy(Protocol):
    name: str

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker: ...


@dataclass
class RoundRobin:
    name: str = "round-robin"
    _turn: int = 0

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        worker = candidates[self._turn % len(candidates)]
        self._turn += 1
        request.reason = "turn"
        return worker


@dataclass
class LeastLoad:
    name: str = "least-load"
    ties: RoundRobin = field(default_factory=RoundRobin)

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        fewest = min(worker.in_flight for worker in candidates)
        worker = self.ties.choose(request, [worker for worker in candidates if worker.in_flight == fewest])
        request.reason = "least-load"
        return worker


@dataclass
class PowerOfTwo:
    name: str = "p2c"
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        request.reason = "p2c"
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(candidates, 2)
        return second if second.in_flight < first.in_flight else first


@dataclass
class Session:
    name: str = "session"
    ttl_s: float = SESSION_TTL_S
    fallback: LeastLoad = field(default_factory=LeastLoad)
    clock: Callable[[], float] = time.monotonic  # a simulated one in `tokenworks plan`
    _last: dict[str, tuple[str, float]] = field(default_factory=dict)  # session -> (worker id, seen at)

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        key, now = request.session, self.clock()
        if key is None:
            return self.fallback.choose(request, candidates)
        remembered = self._last.get(key)
        worker = None
        if remembered is not None and now - remembered[1] <= self.ttl_s:
            worker = next((w for w in candidates if w.id == remembered[0]), None)
        if worker is not None:
            request.reason = "session"
        else:
            worker = self.fallback.choose(request, candidates)
            request.reason = "new-session"
        self._last[key] = (worker.id, now)
        if len(self._last) > 4 * 65536:  # forget the expired, now and then
            self._last = {k: v for k, v in self._last.items() if now - v[1] <= self.ttl_s}
        return worker


POLICIES = {policy.name: policy for policy in (RoundRobin, LeastLoad, PowerOfTwo, Session)}
POLICY_NAMES = (*POLICIES, "kv")
DEFAULT_POLICY = "kv"


def make_policy(name: str) -> Policy:
    """A policy by name (`kv` needs the router's prefix index: see kv_policy.py)."""
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    return POLICIES[name]()
