"""Which worker holds which prompt prefix: the `kv` policy's index of KV cache blocks.

A prompt is cut into blocks of a worker's block size, and each full block gets a chained key
(its tokens and the key of the block before it), so two prompts share a key exactly when they
share every token up to the end of that block: the way the engines' prefix caches see it.
The router computes these keys itself from token ids, for every kind of worker, rather than
reproducing each engine's own block hash: vLLM and tokenworks hash differently, and both send
the token ids of the blocks they store (`BlockStored`); each worker's own hashes are kept only
to find the blocks its later `BlockRemoved` events name.

Two kinds of entries:
- confirmed: a worker's KV events said it stores the block (until they say it was removed);
- predicted: the router sent this prompt there itself, so the blocks will be there shortly.
  For a worker with events this bridges the moments before its events arrive (sibling
  requests sent together land together); for a worker without events it is all the router
  knows, and it expires after a TTL.

Workers are bits of an int mask, so matching a prompt costs one dict lookup and one `&` per
block whatever the number of workers.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT_KEY = 0  # the parent key of a prompt's first block


def block_keys(token_ids: Sequence[int], block_size: int, extra: str | None = None) -> list[int]:
    """The chained keys of the full blocks of `token_ids` (a partial last block has none)."""
    keys, parent = [], hash((ROOT_KEY, extra)) if extra is not None else ROOT_KEY
    tokens = tuple(token_ids)
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tokens[start : start + block_size]))
        keys.append(parent)
    return keys


@dataclass
class _WorkerBlocks:
    bit: int
    # keys its events stored (a dict, not a set: a dict of ints is out of the garbage collector's
    # reach, where a set of a million keys made every full collection 100 ms longer)
    confirmed: dict[int, None] = field(default_factory=dict)
    by_engine_hash: dict[object, int] = field(default_factory=dict)  # its own block hash -> key


@dataclass
class PrefixIndex:
    _workers: dict[str, _WorkerBlocks] = field(default_factory=dict)
    _holders: dict[int, int] = field(default_factory=dict)  # key -> mask of workers that confirmed it
    # key -> (mask of workers predicted to hold it, until when): one expiry per key, the latest
    # prediction's, which is all a hint needs (a worker's own events soon say for sure)
    _predicted: dict[int, tuple[int, float]] = field(default_factory=dict)
    _expiries: list[tuple[float, int, Sequence[int]]] = field(default_factory=list)  # a heap of predictions
    _pushed: int = 0  # a tie-breaker for the heap
    lora_names: set[str] = field(default_factory=set)  # adapters whose blocks workers reported
    _worker_of_bit: dict[int, str] = field(default_factory=dict)
    _free_bits: list[int] = field(default_factory=list)
    _next_bit: int = 0

    # ---- workers ---------------------------------------------------------------------------

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            bit = self._free_bits.pop() if self._free_bits else self._take_bit()
            self._workers[worker_id] = _WorkerBlocks(bit)
            self._worker_of_bit[bit] = worker_id

    def _take_bit(self) -> int:
        bit, self._next_bit = 1 << self._next_bit, self._next_bit + 1
        return bit

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self._workers:
            self.clear(worker_id)
            bit = self._workers.pop(worker_id).bit
            del self._worker_of_bit[bit]
            self._free_bits.append(bit)

    # ---- what the workers' events say --------------------------------------------------------

    def stored(
        self, worker_id: str, engine_hashes: Sequence[object], parent_hash: object | None, token_ids: Sequence[int],
        block_size: int, extra: str | None = None,
    ) -> bool:  # fmt: skip
        """Blocks a worker stored, one after another; False (nothing indexed) when their parent is
        a block the index never heard of: events were lost, and the worker needs a resync."""
        blocks = self._workers[worker_id]
        if extra is not None:
            self.lora_names.add(extra)
        if parent_hash is None:
            parent = hash((ROOT_KEY, extra)) if extra is not None else ROOT_KEY
        else:
            parent = blocks.by_engine_hash.get(parent_hash)
            if parent is None:
                return False
        for index, engine_hash in enumerate(engine_hashes):
            chunk = token_ids[index * block_size : (index + 1) * block_size]
            if len(chunk) < block_size:
                break
            parent = hash((parent, tuple(chunk)))
            blocks.by_engine_hash[engine_hash] = parent
            blocks.confirmed[parent] = None
            self._holders[parent] = self._holders.get(parent, 0) | blocks.bit
        return True

    def removed(self, worker_id: str, engine_hashes: Sequence[object]) -> None:
        blocks = self._workers[worker_id]
        for engine_hash in engine_hashes:
            key = blocks.by_engine_hash.pop(engine_hash, None)
            if key is None:
                continue
            blocks.confirmed.pop(key, None)
            mask = self._holders.get(key, 0) & ~blocks.bit
            if mask:
                self._holders[key] = mask
            else:
                self._holders.pop(key, None)
            self._forget_prediction(key, blocks.bit)  # evicted: no longer expected there either

    def clear(self, worker_id: str) -> None:
        """Forget everything about a worker's cache (it restarted, died, or lost events)."""
        blocks = self._workers.get(worker_id)
        if blocks is None:
            return
        for key in blocks.confirmed:
            mask = self._holders.get(key, 0) & ~blocks.bit
            if mask:
                self._holders[key] = mask
            else:
                self._holders.pop(key, None)
        blocks.confirmed.clear()
        blocks.by_engine_hash.clear()
        for key in [key for key, (mask, _) in self._predicted.items() if mask & blocks.bit]:
            self._forget_prediction(key, blocks.bit)

    def _forget_prediction(self, key: int, bit: int) -> None:
        guess = self._predicted.get(key)
        if guess is not None and guess[0] & bit:
            if guess[0] == bit:
                del self._predicted[key]
            else:
                self._predicted[key] = (guess[0] & ~bit, guess[1])

    # ---- what the router did -------------------------------------------------------------------

    def predict(self, worker_id: str, keys: Sequence[int], ttl_s: float) -> None:
        """The router sent a prompt with these blocks to the worker: expect them there for `ttl_s`
        (the caller leaves out the leading ones the worker is known to hold already)."""
        now = time.monotonic()
        expiry, bit, predicted = now + ttl_s, self._workers[worker_id].bit, self._predicted
        for key in keys:
            mask, _ = predicted.get(key, (0, 0.0))
            predicted[key] = (mask | bit, expiry)
        self._pushed += 1
        heapq.heappush(self._expiries, (expiry, self._pushed, keys))
        self._expire(now)

    def _expire(self, now: float) -> None:
        """Drop the predictions whose time is up (each decision's, in the order they expire)."""
        expiries, predicted = self._expiries, self._predicted
        while expiries and expiries[0][0] <= now:
            for key in heapq.heappop(expiries)[2]:
                entry = predicted.get(key)
                if entry is not None and entry[1] <= now:  # not predicted again since
                    del predicted[key]

    # ---- the question -------------------------------------------------------------------------

    def matched_blocks(self, keys: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        """For each of these workers holding the prompt's first block, how many of its leading
        blocks it holds (confirmed or predicted); the others hold none."""
        return self.matched_and_confirmed(keys, worker_ids)[0]

    def matched_and_confirmed(
        self, keys: Sequence[int], worker_ids: Sequence[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """`matched_blocks`, and the same counting confirmed blocks only, in one walk of the index."""
        wanted = 0
        for worker_id in worker_ids:
            blocks = self._workers.get(worker_id)
            if blocks is not None:
                wanted |= blocks.bit
        depths: dict[str, int] = {}
        confirmed_depths: dict[str, int] = {}
        holders, predicted, now = self._holders, self._predicted, time.monotonic()
        still = still_confirmed = wanted  # the workers holding every block so far (always: confirmed within all)
        for depth, key in enumerate(keys):
            held = holders.get(key, 0)
            mask = held
            guess = predicted.get(key)
            if guess is not None and guess[1] > now:
                mask |= guess[0]
            if still_confirmed & ~held:
                self._record_drops(still_confirmed & ~held, depth, confirmed_depths)
                still_confirmed &= held
            dropped = still & ~mask
            if dropped:
                self._record_drops(dropped, depth, depths)
                still &= mask
                if not still:
                    return depths, confirmed_depths
        self._record_drops(still, len(keys), depths)
        self._record_drops(still_confirmed, len(keys), confirmed_depths)
        return depths, confirmed_depths

    def _record_drops(self, bits: int, depth: int, depths: dict[str, int]) -> None:
        """The workers of these bits held `depth` leading blocks (none recorded at depth 0)."""
        if depth:
            while bits:
                bit = bits & -bits
                depths[self._worker_of_bit[bit]] = depth
                bits ^= bit

    # ---- for metrics -------------------------------------------------------------------------------

    def size(self, worker_id: str | None = None) -> int:
        """Confirmed blocks: of one worker, or all workers' together."""
        if worker_id is not None:
            blocks = self._workers.get(worker_id)
            return len(blocks.confirmed) if blocks else 0
        return sum(len(blocks.confirmed) for blocks in self._workers.values())

    def predicted_size(self) -> int:
        return len(self._predicted)
