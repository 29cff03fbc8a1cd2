"""One request on its way through a worker: the worker's counters while it runs, and what the
router learns from it when it ends.

While a request waits for its first token its prefill (the tokens the policy expected the
worker to compute) counts in the worker's `pending_prefill_tokens`; from its first token to its
end it counts in `decoding`. These persist between paced requests as long as the work does, so a
burst of turns that each finish their prefill before the next arrives still sees the load.

When it ends, the worker's own report (`usage`: prompt, cached and completion tokens) and the
times the router saw give one sample to each of the worker's estimates (estimates.py), and the
policy's predicted prefix hit is counted against the reported one.

The time per output token is learnt between prefills: the prefills the worker did while this
request decoded (those waiting at its first token and those sent there after it) each held its
next token back by their own prefill time, which the `kv` policy prices as prefill already.
Left in, they made the decode guard's slope several times the engine's: each request decoding
on a worker brings on average a share of a prefill into every other's answer, so the guard
counted every prefill a second time, and outweighed the prefill queue it had to be weighed
against (docs/benchmarks.md, "convoys").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenworks.router.metrics import RouterMetrics
from tokenworks.router.policies import RoutedRequest
from tokenworks.router.workers import Worker

_USAGE_MARK = '"usage": {'
_USAGE_MARK_COMPACT = '"usage":{'
_TAIL_CHARS = 8192  # enough for the last chunk (usage and all)


@dataclass(slots=True)
class Flight:
    worker: Worker
    routed: RoutedRequest
    metrics: RouterMetrics
    learn_output: Callable[[int], None] | None = None  # the policy's mean output length, where it keeps one
    started: float | None = None  # when it was sent (None: now)
    prefill_ahead: int = 0  # prefill tokens ahead of it on its worker when sent, its own included
    decoding_at_first_token: int = 0
    # at its first token, its worker's prefill tokens waiting less those ever sent there: with
    # those sent by its end added, the prefill the worker did while it decoded (see ended())
    prefill_mark: int = 0
    first_token: float | None = None
    chunks: int = 0
    tail: str = ""  # the stream's last characters, where its usage is
    _prefilling: bool = True
    _open: bool = True
    clock: Callable[[], float] = time.monotonic  # a simulated one in `tokenworks plan`

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()
        worker = self.worker
        worker.in_flight += 1
        worker.pending_prefill_tokens += self.routed.uncached_tokens
        worker.prefill_tokens_sent += self.routed.uncached_tokens
        self.prefill_ahead = worker.pending_prefill_tokens

    def _end_prefill(self) -> None:
        if self._prefilling:
            self._prefilling = False
            self.worker.pending_prefill_tokens -= self.routed.uncached_tokens

    def streamed(self, text: str) -> None:
        """A piece of the worker's stream passed on."""
        if self.first_token is None:
            self.first_token = self.clock()
            self._end_prefill()
            worker = self.worker
            worker.decoding += 1
            self.decoding_at_first_token = worker.decoding
            self.prefill_mark = worker.pending_prefill_tokens - worker.prefill_tokens_sent
        self.chunks += text.count("\n\ndata: ") + text.startswith("data: ")
        if _USAGE_MARK in text or _USAGE_MARK_COMPACT in text or self.tail:
            self.tail = (self.tail + text)[-_TAIL_CHARS:]

    def ended(self, body: bytes | None = None) -> None:
        """The answer is complete (a whole body, or the end of a stream): learn from it. Without
        the worker's usage (a client that did not ask for it in a stream), from the policy's
        own expectation and the chunks counted."""
        self._release()
        usage = (_usage_of_body(body) if body is not None else _usage_of_stream(self.tail)) or {}
        worker, routed = self.worker, self.routed
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if isinstance(prompt, int):
            self.metrics.prompt_tokens.labels(worker.url).inc(prompt)
        if isinstance(completion, int):
            self.metrics.completion_tokens.labels(worker.url).inc(completion)
        if isinstance(cached, int):
            self.metrics.reported_cached_tokens.labels(worker.url).inc(cached)
            if routed.predicted_cached_tokens is not None:
                self.metrics.predicted_cached_tokens.labels(worker.url).inc(routed.predicted_cached_tokens)
        outputs = completion if isinstance(completion, int) else self.chunks
        if self.learn_output is not None and outputs > 0:
            self.learn_output(outputs)
        if self.first_token is None:
            return  # a whole body: no time of its first token
        known = isinstance(prompt, int) and isinstance(cached, int)
        uncached = prompt - cached if known else routed.uncached_tokens
        now = self.clock()
        worker.ttft.add(self.prefill_ahead - routed.uncached_tokens + uncached, self.first_token - self.started, now)
        if outputs >= 2:
            # the prefills it waited behind while decoding: those waiting at its first token, and
            # those sent there since (pending then + sent since = pending then - sent then + sent now)
            interrupting = self.prefill_mark + worker.prefill_tokens_sent
            decoding_seconds = max(0.0, now - self.first_token - worker.ttft.b * interrupting)
            worker.tpot.add(self.decoding_at_first_token, decoding_seconds / (outputs - 1), now)

    def abandoned(self) -> None:
        """It failed or its client left: nothing to learn."""
        self._release()

    def _release(self) -> None:
        if not self._open:
            return
        self._open = False
        self._end_prefill()
        if self.first_token is not None:
            self.worker.decoding -= 1
        self.worker.in_flight -= 1


def _usage_of_body(body: bytes) -> dict | None:
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _usage_of_stream(tail: str) -> dict | None:
    """The usage of the last chunk that has one (the totals, with or without continuous usage)."""
    for line in reversed(tail.split("\n")):
        if line.startswith("data: {") and ("usage" in line):
            try:
                usage = json.loads(line[len("data: ") :]).get("usage")
            except ValueError:
                continue
            if isinstance(usage, dict):
                return usage
    return None
