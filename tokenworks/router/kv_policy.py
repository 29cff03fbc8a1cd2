"""The `kv` policy: each request goes where it would be answered soonest, counting what the
worker already holds of its prompt.

For each candidate worker the cost is in seconds, from what the router learnt of that worker
(estimates.py, flight.py), not from hand-set weights:

    cost = ttft(prefill ahead + the prompt's blocks the worker lacks)
         + expected output tokens x tpot(requests decoding there + 1)
         + what it costs the requests after it: the prefill it adds, which they queue behind
           (seconds per prefill token x the tokens the worker lacks)
         + what it costs the others: each request decoding there slowed by tpot's slope for
           each of its tokens, while they overlap (about half an answer each)

- the prefix the worker holds comes from the index (prefix_index.py): its KV events, or what
  the router sent there itself;
- the prefill ahead is the worker's requests still waiting for their first token, so a worker
  that holds the prefix but has a queue loses to an idle one once the queue costs more than the
  prefill it would save (counted twice: this request waits for it, and the fleet's later
  requests wait behind the compute it spends; without the second, a sibling arriving while its
  leader still prefills saw an idle worker as cheap as waiting for the leader, and half of every
  burst of 8 computed the prefix again);
- the decode guard: each request decoding on a worker slows every token there by what the
  worker's own figures say, so decode-heavy workers cost more.

And the hot-spot guard: no worker is chosen whose recent load, with this request, would exceed
`max_load_ratio` times the mean (one prefix taking all the traffic cannot pile onto one worker).
The load is the requests sent there, each counting less as it ages (halved every
LOAD_HALF_LIFE_S): a signal that persists between paced requests and over their whole answers,
so that the guard holds the requests each worker serves within the ratio over a run (1.2 keeps
two workers within 1.5x of each other). It binds only on a worker with requests in flight: an
idle one is no hot spot (one user's paced turns stay together on a quiet fleet). And siblings
pass it: requests whose prefix is on its way into a worker (predicted there, not yet confirmed
by its events) may follow it, so that a burst (an agent's fan-out, `n` > 1) lands where its
prefix is being computed. (The chosen worker's new blocks are predicted in the index for
SIBLING_TTL_S, until its events confirm them; so siblings also find their prefix there.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tokenworks.router.estimates import pooled
from tokenworks.router.policies import RoundRobin, RoutedRequest
from tokenworks.router.prefix_index import PrefixIndex, block_keys
from tokenworks.router.workers import Worker

DEFAULT_BLOCK_SIZE = 16  # a worker's until it says (its /kv_events, or its first event)
DEFAULT_OUTPUT_TOKENS = 128  # expected before any answer was seen, when a request sets no max_tokens
SIBLING_TTL_S = 5.0  # a worker with events: until they confirm the blocks
UNCONFIRMED_TTL_S = 120.0  # a worker without events: all the router knows of its cache
MAX_LOAD_RATIO = 1.2
LOAD_HALF_LIFE_S = 10.0
OUTPUT_DECAY = 0.98
REFRESH_S = 0.25  # how often the workers' blended speeds are worked out again (not at every decision)


@dataclass
class KvAware:
    index: PrefixIndex
    max_load_ratio: float = MAX_LOAD_RATIO
    name: str = "kv"
    ties: RoundRobin = field(default_factory=RoundRobin)
    mean_output_tokens: float | None = None  # over recent answers (all workers)
    _speeds: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # id -> ttft a, b, tpot a, b
    _speeds_at: float = -math.inf
    _scaled: dict[str, float] = field(default_factory=dict)  # id -> recent load x _growth(when it was read)
    _origin: float = field(default_factory=time.monotonic)

    def output_tokens_seen(self, count: int) -> None:
        mean = self.mean_output_tokens
        self.mean_output_tokens = count if mean is None else OUTPUT_DECAY * mean + (1 - OUTPUT_DECAY) * count

    def expected_output_tokens(self, request: RoutedRequest) -> float:
        cap = request.max_tokens
        mean = self.mean_output_tokens if self.mean_output_tokens is not None else DEFAULT_OUTPUT_TOKENS
        return min(mean, cap) if cap is not None else mean

    # Recent loads all fade at the same rate, so each is kept scaled to a common origin: the
    # guard then compares them as they are, and only one power is taken per decision, not one
    # per worker (64 of them were a tenth of a decision's time).
    def _growth(self, now: float) -> float:
        """2^((now - origin) / half-life): what 1 request sent now weighs on the common scale."""
        growth = 2.0 ** ((now - self._origin) / LOAD_HALF_LIFE_S)
        if growth > 2.0**40:  # rescale to a new origin before the weights grow unwieldy
            self._scaled = {worker_id: load / growth for worker_id, load in self._scaled.items()}
            self._origin, growth = now, 1.0
        return growth

    def recent_load(self, worker_id: str, now: float) -> float:
        """Requests sent to the worker, each halved for every LOAD_HALF_LIFE_S since."""
        return self._scaled.get(worker_id, 0.0) / self._growth(now)

    def _sent(self, worker: Worker) -> None:
        self._scaled[worker.id] = self._scaled.get(worker.id, 0.0) + self._growth(time.monotonic())

    def guarded(self, candidates: list[Worker], siblings: frozenset[str] = frozenset()) -> list[Worker]:
        """The candidates whose recent load, with one more request, stays within the hot-spot
        guard, the idle ones, and those this request's siblings went to."""
        one = self._growth(time.monotonic())
        scaled = self._scaled
        loads = [scaled.get(worker.id, 0.0) for worker in candidates]
        limit = max(self.max_load_ratio * (sum(loads) + one) / len(candidates), one)
        allowed = [
            worker for worker, load in zip(candidates, loads, strict=True)
            if load + one <= limit or worker.in_flight == 0 or worker.id in siblings
        ]  # fmt: skip
        return allowed or candidates

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        tokens = request.tokens
        if not tokens:
            return self._by_load(request, self.guarded(candidates), "no-prompt-tokens")
        extra = self._extra_key(request)
        sizes = {worker.id: worker.block_size or DEFAULT_BLOCK_SIZE for worker in candidates}
        keys: dict[int, list[int]] = {}
        matched: dict[str, int] = {}  # blocks held, for the workers that hold any
        siblings: set[str] = set()  # workers with events where part of the prefix is predicted only: on its way in
        evented = {worker.id for worker in candidates if worker.kv_events is not None}
        for size in set(sizes.values()):
            keys[size] = block_keys(tokens, size, extra)
            sized = [worker_id for worker_id, its_size in sizes.items() if its_size == size]
            found, confirmed = self.index.matched_and_confirmed(keys[size], sized)
            siblings.update(w for w, blocks in found.items() if w in evented and blocks > confirmed.get(w, 0))
            matched.update(found)
        allowed = self.guarded(candidates, frozenset(siblings))
        outputs = self.expected_output_tokens(request)
        speeds = self.speeds(candidates)
        order = self.ties.choose(request, allowed)  # whose turn it is, for exact ties
        longest, prompt = len(tokens) - 1, len(tokens)  # the engine computes one token at least
        hit_of = {
            worker_id: min(blocks * sizes[worker_id], longest) for worker_id, blocks in matched.items()
        }  # fmt: skip
        best: tuple[float, int, bool] | None = None
        chosen = allowed[0]
        for worker in allowed:
            turn, per_token, step, per_decoding = speeds[worker.id]
            decoding = worker.decoding
            lacks = prompt - hit_of.get(worker.id, 0)
            ahead = worker.pending_prefill_tokens + lacks
            cost = turn + per_token * (ahead + lacks) + outputs * (step + per_decoding * (decoding + 1 + decoding / 2))
            rank = (cost, worker.in_flight, worker is not order)
            if best is None or rank < best:
                best, chosen = rank, worker
        chosen_hit, best_anywhere = hit_of.get(chosen.id, 0), max(hit_of.values(), default=0)
        if best_anywhere == 0:
            request.reason = "no-prefix-hit"
        elif chosen_hit == best_anywhere:
            request.reason = "prefix-hit"
        elif max((hit_of.get(worker.id, 0) for worker in allowed), default=0) < best_anywhere:
            request.reason = "hot-spot-guard"
        else:
            request.reason = "load"  # the longest match's queue cost more than the prefill it saves
        request.predicted_cached_tokens = chosen_hit
        request.uncached_tokens = prompt - chosen_hit
        # Only the blocks it is not known to hold yet need predicting (on a hit, a few or none).
        ttl = SIBLING_TTL_S if chosen.kv_events is not None else UNCONFIRMED_TTL_S
        self.index.predict(chosen.id, keys[sizes[chosen.id]][matched.get(chosen.id, 0) :], ttl)
        self._sent(chosen)
        return chosen

    def speeds(self, candidates: list[Worker]) -> dict[str, tuple[float, float, float, float]]:
        """Each worker's (turn, seconds per prefill token, step, seconds per decoding request):
        its own fits blended with its peers', worked out again every REFRESH_S."""
        now = time.monotonic()
        if now - self._speeds_at > REFRESH_S or any(worker.id not in self._speeds for worker in candidates):
            ttft_peers = pooled([worker.ttft for worker in candidates], now)
            tpot_peers = pooled([worker.tpot for worker in candidates], now)
            self._speeds = {
                worker.id: (*worker.ttft.blended(ttft_peers, now), *worker.tpot.blended(tpot_peers, now))
                for worker in candidates
            }  # fmt: skip
            self._speeds_at = now
        return self._speeds

    def _by_load(self, request: RoutedRequest, allowed: list[Worker], reason: str) -> Worker:
        fewest = min(worker.in_flight for worker in allowed)
        worker = self.ties.choose(request, [worker for worker in allowed if worker.in_flight == fewest])
        request.reason = reason
        request.predicted_cached_tokens, request.uncached_tokens = None, 0
        self._sent(worker)
        return worker

    def _extra_key(self, request: RoutedRequest) -> str | None:
        """An adapter's blocks are its own (workers send their LoRA name with them)."""
        model = request.body.get("model")
        return model if isinstance(model, str) and model in self.index.lora_names else None
