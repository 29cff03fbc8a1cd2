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

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT_KEY = 0  # the parent key of a prompt's first block


def block_keys(token_ids: Sequence[int], block_size: int, extra: str | None = None) -> list[int]:
    """The chained keys of the full blocks of `token_ids` (a partial last block has none)."""
    keys, parent = [], hash((ROOT_KEY, extra)) if extra is not None else ROOT_KEY
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, hash(tuple(token_ids[start : start + block_size]))))
        keys.append(parent)
    return keys


@dataclass
class _WorkerBlocks:
    bit: int
    confirmed: set[int] = field(default_factory=set)  # keys its events stored
    by_engine_hash: dict[object, int] = field(default_factory=dict)  # its own block hash -> key


@dataclass
class PrefixIndex:
    _workers: dict[str, _WorkerBlocks] = field(default_factory=dict)
    _holders: dict[int, int] = field(default_factory=dict)  # key -> mask of workers that confirmed it
    _predicted: dict[int, dict[str, float]] = field(default_factory=dict)  # key -> worker -> expiry
    lora_names: set[str] = field(default_factory=set)  # adapters whose blocks workers reported
    _free_bits: list[int] = field(default_factory=list)
    _next_bit: int = 0
    _sweep_at: float = 0.0

    # ---- workers ---------------------------------------------------------------------------

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            bit = self._free_bits.pop() if self._free_bits else self._take_bit()
            self._workers[worker_id] = _WorkerBlocks(bit)

    def _take_bit(self) -> int:
        bit, self._next_bit = 1 << self._next_bit, self._next_bit + 1
        return bit

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self._workers:
            self.clear(worker_id)
            self._free_bits.append(self._workers.pop(worker_id).bit)

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
            parent = hash((parent, hash(tuple(chunk))))
            blocks.by_engine_hash[engine_hash] = parent
            blocks.confirmed.add(parent)
            self._holders[parent] = self._holders.get(parent, 0) | blocks.bit
        return True

    def removed(self, worker_id: str, engine_hashes: Sequence[object]) -> None:
        blocks = self._workers[worker_id]
        for engine_hash in engine_hashes:
            key = blocks.by_engine_hash.pop(engine_hash, None)
            if key is None:
                continue
            blocks.confirmed.discard(key)
            mask = self._holders.get(key, 0) & ~blocks.bit
            if mask:
                self._holders[key] = mask
            else:
                self._holders.pop(key, None)

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
        for key in [key for key, workers in self._predicted.items() if worker_id in workers]:
            workers = self._predicted[key]
            del workers[worker_id]
            if not workers:
                del self._predicted[key]

    # ---- what the router did -------------------------------------------------------------------

    def predict(self, worker_id: str, keys: Sequence[int], ttl_s: float) -> None:
        """The router sent a prompt with these blocks to the worker: expect them there for `ttl_s`."""
        expiry = time.monotonic() + ttl_s
        for key in keys:
            workers = self._predicted.setdefault(key, {})
            if workers.get(worker_id, 0.0) < expiry:
                workers[worker_id] = expiry
        self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._sweep_at:
            return
        self._sweep_at = now + 1.0
        for key in [key for key, workers in self._predicted.items() if max(workers.values()) <= now]:
            del self._predicted[key]

    # ---- the question -------------------------------------------------------------------------

    def matched_blocks(self, keys: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        """For each worker, how many of the prompt's leading blocks it holds (confirmed or predicted)."""
        bits = {worker_id: self._workers[worker_id].bit for worker_id in worker_ids if worker_id in self._workers}
        wanted = 0
        for bit in bits.values():
            wanted |= bit
        depth_of_bit: dict[int, int] = {}
        still, now = wanted, time.monotonic()
        for depth, key in enumerate(keys):
            mask = self._holders.get(key, 0)
            predicted = self._predicted.get(key)
            if predicted:
                for worker_id, expiry in predicted.items():
                    if expiry > now and worker_id in bits:
                        mask |= bits[worker_id]
            dropped = still & ~mask
            if dropped:
                for bit in bits.values():
                    if dropped & bit:
                        depth_of_bit[bit] = depth
                still &= mask
                if not still:
                    break
        return {worker_id: depth_of_bit.get(bit, len(keys)) for worker_id, bit in bits.items()}

    # ---- for metrics -------------------------------------------------------------------------------

    def size(self, worker_id: str | None = None) -> int:
        """Confirmed blocks: of one worker, or all workers' together."""
        if worker_id is not None:
            blocks = self._workers.get(worker_id)
            return len(blocks.confirmed) if blocks else 0
        return sum(len(blocks.confirmed) for blocks in self._workers.values())

    def predicted_size(self) -> int:
        return len(self._predicted)
