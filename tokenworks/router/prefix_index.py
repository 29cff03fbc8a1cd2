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

Workers are bits of an int mask, so matching a prompt costs two table lookups (confirmed and
predicted: key_masks.py) and a few `&`s per block whatever the number of workers.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import getitem
from pathlib import Path

from tokenworks import native
from tokenworks.router.key_masks import KeyMasks

ROOT_KEY = 0  # the parent key of a prompt's first block
MASKS_REMEMBERED = 4096  # sets of holders whose worker ids are kept at hand


# The loops of a decision that grow with the prompt or the fleet, compiled (_blocks.c: the two
# below, the index's tables and the kv policy's pricing, with the same answers as the Python
# ones, which run where it cannot be built, or while this is None): a decision on a
# million-block index with 64 workers takes half the Python loops' time (docs/benchmarks.md,
# Router, session 20).
compiled = native.load("_blocks", Path(__file__).with_name("_blocks.c"))
WALK_BITS = 64  # the compiled loops and tables take masks of up to 64 workers; more go through Python's


def _new_table() -> KeyMasks:
    return compiled.KeyMasks() if compiled is not None else KeyMasks()


def block_keys(token_ids: Sequence[int], block_size: int, extra: str | None = None) -> list[int]:
    """The chained keys of the full blocks of `token_ids` (a partial last block has none)."""
    return chained_keys(token_ids, block_size, hash((ROOT_KEY, extra)) if extra is not None else ROOT_KEY)


def chained_keys(token_ids: Sequence[int], block_size: int, parent: int) -> list[int]:
    """The keys of the full blocks of `token_ids`, the first one chained to `parent`: each is
    hash((its parent, tuple(its tokens))), so a key stands for every token up to its block's end."""
    if compiled is not None and isinstance(token_ids, list | tuple):
        return compiled.chained_keys(token_ids, block_size, parent)
    keys: list[int] = []
    append = keys.append
    for block in zip(*[iter(token_ids)] * block_size, strict=False):  # whole blocks, as tuples, cut in C
        parent = hash((parent, block))
        append(parent)
    return keys


@dataclass(slots=True)
class Match:
    """Where a prompt's leading blocks are, confirmed or predicted: (blocks, mask of the workers
    holding exactly that many) in increasing blocks. A worker in no group holds none."""

    keys: Sequence[int]
    groups: list[tuple[int, int]]

    def blocks(self, bit: int) -> int:
        for depth, mask in self.groups:
            if mask & bit:
                return depth
        return 0


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
    _holders: KeyMasks = field(default_factory=_new_table)  # key -> mask of workers that confirmed it
    # key -> mask of workers predicted to hold it. Each prediction (a worker's bit on a prompt's
    # keys) leaves when its time is up, before every question, so what is here holds. (A key
    # predicted twice for one worker leaves with the first: a hint, soon confirmed by the
    # worker's own events or sent again.)
    _predicted: KeyMasks = field(default_factory=_new_table)
    _expiries: list[tuple[float, int, int, Sequence[int]]] = field(default_factory=list)  # a heap of predictions
    _pushed: int = 0  # a tie-breaker for the heap
    lora_names: set[str] = field(default_factory=set)  # adapters whose blocks workers reported
    _worker_of_bit: dict[int, str] = field(default_factory=dict)
    _ids_of_mask: dict[int, tuple[str, ...]] = field(default_factory=dict)  # see workers_of
    _ids_of_byte: list[tuple[tuple[str, ...], ...]] = field(default_factory=list)  # see _ids_by_byte
    _free_bits: list[int] = field(default_factory=list)
    _next_bit: int = 0
    clock: Callable[[], float] = time.monotonic  # what predictions expire by (simulated in `tokenworks plan`)

    # ---- workers ---------------------------------------------------------------------------

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            bit = self._free_bits.pop() if self._free_bits else self._take_bit()
            self._workers[worker_id] = _WorkerBlocks(bit)
            self._worker_of_bit[bit] = worker_id
            self._ids_of_mask.clear()
            self._ids_of_byte = []

    def _take_bit(self) -> int:
        if self._next_bit == WALK_BITS and not isinstance(self._holders, KeyMasks):
            # a 65th worker: the compiled tables hold 64 bits, the Python ones any number
            self._holders, self._predicted = KeyMasks(self._holders.items()), KeyMasks(self._predicted.items())
        bit, self._next_bit = 1 << self._next_bit, self._next_bit + 1
        return bit

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self._workers:
            self.clear(worker_id)
            bit = self._workers.pop(worker_id).bit
            del self._worker_of_bit[bit]
            self._free_bits.append(bit)
            self._ids_of_mask.clear()
            self._ids_of_byte = []

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
        keys = chained_keys(token_ids[: len(engine_hashes) * block_size], block_size, parent)
        # (a partial last block has no key: zip stops at the keys)
        blocks.by_engine_hash.update(zip(engine_hashes, keys, strict=False))
        blocks.confirmed.update(zip(keys, repeat(None)))
        self._holders.add(keys, blocks.bit)
        return True

    def removed(self, worker_id: str, engine_hashes: Sequence[object]) -> None:
        blocks = self._workers[worker_id]
        by_engine_hash = blocks.by_engine_hash
        keys = [key for key in map(by_engine_hash.pop, engine_hashes, repeat(None)) if key is not None]
        for key in keys:
            blocks.confirmed.pop(key, None)
        self._holders.discard(keys, blocks.bit)
        self._predicted.discard(keys, blocks.bit)  # evicted: no longer expected there either

    def clear(self, worker_id: str) -> None:
        """Forget everything about a worker's cache (it restarted, died, or lost events)."""
        blocks = self._workers.get(worker_id)
        if blocks is None:
            return
        self._holders.discard(list(blocks.confirmed), blocks.bit)
        blocks.confirmed.clear()
        blocks.by_engine_hash.clear()
        self._predicted.discard(self._predicted.holding(blocks.bit), blocks.bit)

    # ---- what the router did -------------------------------------------------------------------

    def predict(self, worker_id: str, keys: Sequence[int], ttl_s: float) -> None:
        """The router sent a prompt with these blocks to the worker: expect them there for `ttl_s`
        (the caller leaves out the leading ones the worker is known to hold already)."""
        now = self.clock()
        bit = self._workers[worker_id].bit
        self._predicted.add(keys, bit)
        self._pushed += 1
        heapq.heappush(self._expiries, (now + ttl_s, self._pushed, bit, keys))
        self._expire(now)

    def _expire(self, now: float) -> None:
        """Drop the predictions whose time is up, in the order they expire."""
        expiries, predicted = self._expiries, self._predicted
        while expiries and expiries[0][0] <= now:
            _, _, bit, keys = heapq.heappop(expiries)
            predicted.discard(keys, bit)

    # ---- the question -------------------------------------------------------------------------

    def match(self, keys: Sequence[int], wanted: int | None = None) -> Match:
        """How many of the prompt's leading blocks each of the `wanted` workers (a mask, see
        mask_of; every worker by default) holds, counting the predicted ones. One walk of the
        index, which records only where the holders change (a few times): a popular prefix is
        held by most workers, and recording each of them at every walk took half a decision."""
        if wanted is None:
            wanted = (1 << self._next_bit) - 1  # every bit ever taken (a free one holds nothing)
        self._expire(self.clock())  # what remains predicted holds
        holders, predicted = self._holders, self._predicted
        if compiled is not None and wanted >> WALK_BITS == 0 and not isinstance(holders, KeyMasks):
            return Match(keys, compiled.walk(keys, holders, predicted, wanted))
        groups: list[tuple[int, int]] = []
        still = wanted  # the workers holding every block so far
        for depth, key in enumerate(keys):
            dropped = still & ~(holders.get(key) | predicted.get(key))
            if dropped:
                if depth:
                    groups.append((depth, dropped))
                still &= ~dropped
                if not still:
                    return Match(keys, groups)
        if still and keys:
            groups.append((len(keys), still))
        return Match(keys, groups)

    def mask_of(self, worker_ids: Iterable[str]) -> int:
        """The mask of these workers (those the index knows)."""
        mask = 0
        for worker_id in worker_ids:
            mask |= self.bit(worker_id)
        return mask

    def confirms(self, worker_id: str, key: int) -> bool:
        """Whether the worker's own events say it holds this block."""
        return bool(self._holders.get(key) & self.bit(worker_id))

    def confirmed_blocks(self, keys: Sequence[int], worker_id: str) -> int:
        """How many of these leading blocks the worker's own events confirmed it holds."""
        depth = 0
        while depth < len(keys) and self.confirms(worker_id, keys[depth]):
            depth += 1
        return depth

    def matched_blocks(self, keys: Sequence[int], worker_ids: Sequence[str] | None = None) -> dict[str, int]:
        """For each of these workers (or all) holding the prompt's first block, how many of its
        leading blocks it holds (confirmed or predicted); the others hold none."""
        return self.matched_and_confirmed(keys, worker_ids)[0]

    def matched_and_confirmed(
        self, keys: Sequence[int], worker_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, int], dict[str, int]]:
        """`matched_blocks`, and the same counting confirmed blocks only."""
        wanted = self.mask_of(worker_ids) if worker_ids is not None else None
        matched = self.depths_of(self.match(keys, wanted).groups)
        confirmed = {worker_id: self.confirmed_blocks(keys, worker_id) for worker_id in matched}
        return matched, {worker_id: blocks for worker_id, blocks in confirmed.items() if blocks}

    def depths_of(self, groups: list[tuple[int, int]]) -> dict[str, int]:
        """Worker id -> leading blocks held, from a Match's (blocks, workers) groups."""
        return {worker_id: depth for depth, mask in groups for worker_id in self.workers_of(mask)}

    def workers_of(self, mask: int) -> tuple[str, ...]:
        """The ids of a mask's workers, in the order of their bits. The holders of a popular
        prefix come up again and again: their ids are remembered (until the workers change).
        A new mask is read a byte at a time, each byte's ids looked up, all in C: bit by bit in
        Python, a mask of a few dozen holders took 10-20 us, a tenth of a slow decision."""
        ids = self._ids_of_mask.get(mask)
        if ids is None:
            if len(self._ids_of_mask) >= MASKS_REMEMBERED:
                self._ids_of_mask.clear()
            if not self._ids_of_byte:
                self._ids_of_byte = self._ids_by_byte()
            tables = self._ids_of_byte
            ids = tuple(chain.from_iterable(map(getitem, tables, mask.to_bytes(len(tables), "little"))))
            self._ids_of_mask[mask] = ids
        return ids

    def _ids_by_byte(self) -> list[tuple[tuple[str, ...], ...]]:
        """For each byte of a mask, the ids of the workers each of its 256 values holds (a bit
        no worker has holds none)."""
        tables = []
        for first in range(0, max(self._next_bit, 1), 8):
            ids = [self._worker_of_bit.get(1 << (first + k)) for k in range(8)]
            tables.append(tuple(
                tuple(worker_id for k, worker_id in enumerate(ids) if value >> k & 1 and worker_id is not None)
                for value in range(256)
            ))  # fmt: skip
        return tables

    def bit(self, worker_id: str) -> int:
        """The worker's bit in a Match's masks (0 for a worker the index does not know)."""
        blocks = self._workers.get(worker_id)
        return blocks.bit if blocks is not None else 0

    # ---- for metrics -------------------------------------------------------------------------------

    def size(self, worker_id: str | None = None) -> int:
        """Confirmed blocks: of one worker, or all workers' together."""
        if worker_id is not None:
            blocks = self._workers.get(worker_id)
            return len(blocks.confirmed) if blocks else 0
        return sum(len(blocks.confirmed) for blocks in self._workers.values())

    def predicted_size(self) -> int:
        return len(self._predicted)
