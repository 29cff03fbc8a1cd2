"""The router in front of simulated replicas: its own policies, flights and prefix index.

Each replica is a `Worker` of the router's (workers.py) and each request a `Flight` (flight.py):
the same objects the live router keeps, so the workers' load fields (in flight, prefill pending,
decoding) and their fitted speeds (estimates.py) move as they do live, and the policies read them
unchanged. The `kv` policy's `PrefixIndex` is fed the replicas' own KV events (the dicts the
engine's block pool records for its publisher) straight after each step, without ZMQ: a
simulated replica's events reach the router at the end of the step that made them.

Every clock the router reads is the simulation's: the policies, the index and the flights take
one (`clock=`), which is `time.monotonic` live.
"""

from __future__ import annotations

import json
from collections import Counter

from tokenworks.plan.clock import SimClock
from tokenworks.router.flight import Flight
from tokenworks.router.kv_policy import MAX_LOAD_RATIO, KvAware
from tokenworks.router.metrics import RouterMetrics
from tokenworks.router.policies import Policy, RoutedRequest, Session, make_policy
from tokenworks.router.prefix_index import PrefixIndex
from tokenworks.router.workers import KVEventSource, Worker, WorkerPool

_FIRST_CHUNK = "data: {}\n\n"  # what Flight.streamed needs to hear of a first token: one event


def policy_on_clock(name: str, clock: SimClock, max_load_ratio: float = MAX_LOAD_RATIO) -> Policy:
    """The router's policy by name, reading the simulated clock; ValueError for an unknown name."""
    if name == "kv":
        return KvAware(PrefixIndex(clock=clock), max_load_ratio, clock=clock)
    if name == "session":
        return Session(clock=clock)
    return make_policy(name)  # round-robin, least-load, p2c (no clock of their own); unknown: ValueError


class SimRouter:
    def __init__(self, policy: Policy, block_sizes: list[int], clock: SimClock, prefix_caching: bool = True) -> None:
        self.policy = policy
        self.clock = clock
        self.index: PrefixIndex | None = getattr(policy, "index", None)
        # Replicas publish events when the policy has an index to feed (as `tokenworks serve
        # --workers N` starts its workers for the kv router), and have some when they cache prefixes
        # (an engine without prefix caching publishes none: the router then only predicts).
        self.records_kv_events = self.index is not None and prefix_caching
        events = KVEventSource("simulated") if self.records_kv_events else None
        self.workers = [
            Worker(f"sim://replica-{i}", f"w{i}", block_size=size, kv_events=events, probed=True)
            for i, size in enumerate(block_sizes)
        ]
        self._replica_of = {worker.id: i for i, worker in enumerate(self.workers)}
        self.metrics = RouterMetrics(WorkerPool(list(self.workers)))
        self._learn = getattr(policy, "output_tokens_seen", None)
        self.reasons: Counter[str] = Counter()
        if self.index is not None:
            for worker in self.workers:
                self.index.add_worker(worker.id)

    def route(self, prompt_ids: list[int], max_tokens: int, session: int | None = None) -> tuple[int, Flight]:
        """The replica the policy sends this request to, and the flight that follows it there.
        The body holds what the policies read of the bench client's: max_tokens, and a multi-turn
        conversation's `user`."""
        body: dict = {"max_tokens": max_tokens}
        if session is not None:
            body["user"] = f"session-{session}"
        routed = RoutedRequest(body=body, headers={}, tokens=prompt_ids)
        worker = self.policy.choose(routed, self.workers)
        self.reasons[routed.reason] += 1
        flight = Flight(worker, routed, self.metrics, self._learn, started=self.clock.now, clock=self.clock)
        return self._replica_of[worker.id], flight

    @staticmethod
    def first_token(flight: Flight) -> None:
        flight.streamed(_FIRST_CHUNK)

    @staticmethod
    def finished(flight: Flight, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        """The answer's end, with the usage a tokenworks worker reports."""
        usage = {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }  # fmt: skip
        flight.worker.served += 1
        flight.ended(json.dumps({"usage": usage}).encode())

    def kv_events(self, replica: int, events: list[dict]) -> None:
        """Apply one replica's events of a step, as the router's event feed applies a batch."""
        index, worker_id = self.index, self.workers[replica].id
        for event in events:
            kind = event["type"]
            if kind == "BlockStored":
                index.stored(
                    worker_id, event["block_hashes"], event["parent_block_hash"], event["token_ids"],
                    event["block_size"], event["lora_name"],
                )  # fmt: skip
            elif kind == "BlockRemoved":
                index.removed(worker_id, event["block_hashes"])
            elif kind == "AllBlocksCleared":
                index.clear(worker_id)
