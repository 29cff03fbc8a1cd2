"""Which KV blocks each request holds: prefix-cache lookups, slot allocation, freeing.

The scheduler asks three things of it: how much of a new request's prompt is already
cached (`cached_prefix`), whether the next tokens of a request fit (`allocate_slots`,
which takes the blocks or takes nothing), and to release a request (`free`).
"""

from __future__ import annotations

from tokenworks.engine.block_pool import BlockPool, KVBlock, block_hash
from tokenworks.engine.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks: dict[str, list[KVBlock]] = {}
        self._registered: dict[str, int] = {}  # leading blocks of each request already under their hash

    @property
    def usage(self) -> float:
        return self.pool.usage

    def blocks_of(self, request: Request) -> list[KVBlock]:
        return self._blocks.get(request.request_id, [])

    def _update_hashes(self, request: Request) -> list[bytes]:
        """Extend the request's chained block hashes to every full block of its tokens."""
        hashes, size, tokens = request.block_hashes, self.block_size, request.all_token_ids
        while (len(hashes) + 1) * size <= len(tokens):
            start = len(hashes) * size
            parent = hashes[-1] if hashes else None
            hashes.append(block_hash(parent, tokens[start : start + size], request.cache_salt))
        return hashes

    def cached_prefix(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest run of cached full blocks at the start of the request, and its token count.

        At least one token is always left to compute: the step that computes it samples
        the next token. A request still owed prompt logprobs reads nothing from the cache
        (as in vLLM): a cached block holds keys and values, not the logits its tokens gave,
        so its prompt is computed again; its blocks still go into the cache for others.
        """
        if not self.enable_prefix_caching or request.needs_prompt_logprobs:
            return [], 0
        hits: list[KVBlock] = []
        for hash_value in self._update_hashes(request):
            block = self.pool.lookup(hash_value)
            if block is None:
                break
            hits.append(block)
        if len(hits) * self.block_size >= request.num_tokens:
            hits.pop()
        return hits, len(hits) * self.block_size

    def record_lookup(self, num_tokens: int, num_cached_tokens: int) -> None:
        """Count one request's prefix-cache lookup in the hit-rate statistics.

        The scheduler calls this once per request, when it first admits it: a request at the
        head of the queue is looked up again at every step until blocks free up, and counting
        each of those would inflate the queries (and deflate the hit rate) under load.
        """
        self.pool.stats.queries += num_tokens
        self.pool.stats.hits += num_cached_tokens

    def allocate_slots(self, request: Request, num_new_tokens: int, cached: list[KVBlock] | None = None) -> bool:
        """Give the request room for `num_new_tokens` more tokens (after any cached prefix).

        All or nothing: False, with nothing taken, when the free blocks do not suffice.
        """
        held = self._blocks.get(request.request_id)
        if held is None:
            held = self._blocks[request.request_id] = []
        elif not cached:  # a running request: most decode steps find room in its last block
            total = request.num_computed_tokens + num_new_tokens
            if -(-total // self.block_size) <= len(held):
                if total // self.block_size > self._registered.get(request.request_id, 0):
                    self._cache_full_blocks(request, held, total)  # a block fills up this step
                return True
        cached = cached or []
        computed = request.num_computed_tokens + len(cached) * self.block_size
        needed = -(-(computed + num_new_tokens) // self.block_size) - len(held) - len(cached)
        reviving = sum(1 for block in cached if block.ref_count == 0)  # free now, in use after
        if needed + reviving > self.pool.num_free_blocks:
            if not held:
                del self._blocks[request.request_id]
            return False
        self.pool.share(cached)
        held.extend(cached)
        if needed > 0:
            held.extend(self.pool.allocate(needed))
        request.block_ids = [block.block_id for block in held]
        self._cache_full_blocks(request, held, computed + num_new_tokens)
        return True

    def _cache_full_blocks(self, request: Request, held: list[KVBlock], num_tokens: int) -> None:
        """Register the blocks whose tokens will all have KV once this step has run."""
        registered = self._registered.get(request.request_id, 0)
        if not self.enable_prefix_caching or num_tokens // self.block_size <= registered:
            return  # no block filled up: most decode steps (the hashes extend when one does)
        hashes = self._update_hashes(request)
        full = min(num_tokens // self.block_size, len(hashes))
        # A full block's tokens never change: register each once, not again every step.
        stored = [index for index in range(registered, full) if self.pool.cache(held[index], hashes[index])]
        self._registered[request.request_id] = full
        if stored and self.pool.events is not None:
            self._record_stored(request, hashes, stored)

    def _record_stored(self, request: Request, hashes: list[bytes], stored: list[int]) -> None:
        """One `BlockStored` event per run of consecutive newly registered blocks."""
        size, tokens = self.block_size, request.all_token_ids
        adapter = request.adapter
        lora_name = getattr(adapter, "name", None)
        run_start = 0
        for position in range(1, len(stored) + 1):
            if position < len(stored) and stored[position] == stored[position - 1] + 1:
                continue
            first, last = stored[run_start], stored[position - 1]
            self.pool.record_stored(
                hashes[first : last + 1], hashes[first - 1] if first else None,
                list(tokens[first * size : (last + 1) * size]), size, lora_name,
            )  # fmt: skip
            run_start = position

    def free(self, request: Request) -> None:
        """Release the request's blocks, last first (its shared prefix stays cached longest)."""
        held = self._blocks.pop(request.request_id, [])
        self._registered.pop(request.request_id, None)
        self.pool.free(reversed(held))
        request.block_ids = []

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
