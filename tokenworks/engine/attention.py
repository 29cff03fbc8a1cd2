"""Attention over the paged KV cache.

The cache of one layer is two tensors of shape (num_blocks, block_size, K, D): K key/value
heads of D dims per token slot. A request's tokens live in the blocks of its block table,
in order, so token position p sits in block `table[p // block_size]` at offset
`p % block_size`. Shapes below: N tokens in the step, H query heads, L keys attended.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

# Bytes of keys and values gathered for one SDPA call in decode: a few MB, within L3.
_DECODE_GATHER_BYTES = 8 * 2**20


@dataclass(slots=True)
class DecodeGroup:
    """Requests computing one token each: attended together in one padded batch."""

    token_index: torch.Tensor | slice  # (B,) rows of the step's flat token batch; a slice when they are consecutive
    block_table: torch.Tensor  # (B, max_blocks) block ids, padded with 0
    mask: torch.Tensor | None  # (B, 1, 1, L) True where the key is attended; None for the compiled kernel
    rows: torch.Tensor | None = None  # (B,) int64 token_index as a tensor, for the compiled kernel
    context_lens: torch.Tensor | None = None  # (B,) int64 keys per request, for the compiled kernel
    window: int | None = None  # sliding window, for the compiled kernel


@dataclass(slots=True)
class PrefillGroup:
    """Every prefill chunk of a step, for the compiled kernel, which reads keys and values where
    they lie in the cache (the chunks' own already written there) and masks by position."""

    first_rows: torch.Tensor  # (C,) int64 the step's row of each chunk's first token
    lengths: torch.Tensor  # (C,) int64 tokens in each chunk
    context_lens: torch.Tensor  # (C,) int64 keys up to and including each chunk's last token
    block_table: torch.Tensor  # (C, max_blocks) block ids, padded with 0
    window: int | None = None


@dataclass(slots=True)
class PrefillChunk:
    """One request computing a run of tokens (a prompt, or a chunk of one)."""

    token_slice: slice  # its rows in the step's flat token batch
    block_table: torch.Tensor  # (blocks,) its block ids
    mask: torch.Tensor | None  # (T, L) True where attended; None: plain causal over the chunk alone
    context: int  # L: tokens of context including this chunk


def write_cache(cache: torch.Tensor, slot_mapping: torch.Tensor, values: torch.Tensor) -> None:
    """Store (N, K, D) values into their slots of a (num_blocks, block_size, K, D) cache."""
    cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, values)


class GatherBuffers:
    """Reused room for the keys and values that attention gathers from the cache.

    Gathered keys of a large batch take tens of MB a layer; allocated afresh, every one is
    a new mapping of memory whose pages fault in on first touch (8,000 faults, 30 ms for
    32 MB, more than the copy itself). One buffer each for keys and values, grown when a
    step needs more, is filled again by every layer and every chunk in turn.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """A (rows, width) tensor of like's dtype and device; its old contents are garbage."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < rows * width or buffer.dtype != like.dtype:
            buffer = like.new_empty(rows * width)
            self._buffers[name] = buffer
        return buffer[: rows * width].view(rows, width)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int, out: torch.Tensor) -> torch.Tensor:
    """(..., blocks) block ids -> (..., K, length, D) keys or values in position order, in out."""
    heads, dim = cache.shape[2:]
    # index_select of whole blocks as flat rows: a memcpy per block, several times faster
    # than advanced indexing of the 4-d cache.
    rows = torch.index_select(cache.view(cache.shape[0], -1), 0, block_table.flatten(), out=out)
    gathered = rows.view(*block_table.shape[:-1], -1, heads, dim)[..., :length, :, :]  # (..., positions, K, D)
    return gathered.transpose(-3, -2)


def _gather_pair(
    k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, length: int, buffers: GatherBuffers
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = block_table.numel(), k_cache[0].numel()
    keys = _gather(k_cache, block_table, length, buffers.take("k", k_cache, rows, width))
    values = _gather(v_cache, block_table, length, buffers.take("v", v_cache, rows, width))
    return keys, values


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    decode: DecodeGroup | None,
    prefills: list[PrefillChunk] | PrefillGroup,
    buffers: GatherBuffers,
    kernels: ModuleType | None = None,
) -> torch.Tensor:
    """(N, H, D) queries (keys and values already written to the cache) -> (N, H, D) outputs.

    With `kernels` (the compiled CPU kernels) decode, and prefill chunks given as a
    PrefillGroup, read the cache in place; else SDPA reads each request's blocks gathered into
    a contiguous buffer (decode, chunks after a cached prefix) or the chunk's own keys.
    """
    out = q.new_empty(q.shape)  # contiguous, whatever the strides of q
    gqa = q.shape[1] != k_cache.shape[2]
    if decode is not None and kernels is not None:
        kernels.paged_decode_attention(
            out, q, decode.rows, k_cache, v_cache, decode.block_table, decode.context_lens,
            q.shape[-1] ** -0.5, decode.window or 0,
        )  # fmt: skip
    elif decode is not None:
        # A few sequences at a time: their gathered keys and values stay in the CPU's cache
        # for SDPA to read, instead of a round trip through memory (1.6x faster for 256).
        per_sequence = 2 * decode.block_table.shape[1] * k_cache[0].numel() * k_cache.element_size()
        group = max(1, _DECODE_GATHER_BYTES // per_sequence)
        length = decode.mask.shape[-1]
        for start in range(0, decode.block_table.shape[0], group):
            rows = _rows(decode.token_index, start, group)
            keys, values = _gather_pair(k_cache, v_cache, decode.block_table[start : start + group], length, buffers)
            # Each key/value head's G query heads form a G-row query against its keys: no
            # copy of keys and values per query head, which SDPA's enable_gqa makes on CPU.
            batch, kv_heads = keys.shape[:2]
            queries = q[rows].view(batch, kv_heads, -1, q.shape[-1])  # (b, K, G, D)
            attended = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=decode.mask[start : start + group]
            )  # (b, K, G, D)
            out[rows] = attended.reshape(batch, -1, q.shape[-1])  # CUDA kernels may return it strided
    if isinstance(prefills, PrefillGroup):
        kernels.paged_prefill_attention(
            out, q, k_cache, v_cache, prefills.block_table, prefills.first_rows, prefills.lengths,
            prefills.context_lens, q.shape[-1] ** -0.5, prefills.window or 0,
        )  # fmt: skip
        prefills = []
    for chunk in prefills:
        queries = q[chunk.token_slice].transpose(0, 1).unsqueeze(0)  # (1, H, T, D)
        if chunk.mask is None:  # nothing before this chunk: attend to its own keys, causally
            keys = k[chunk.token_slice].transpose(0, 1).unsqueeze(0)  # (1, K, T, D)
            values = v[chunk.token_slice].transpose(0, 1).unsqueeze(0)
        else:
            keys, values = _gather_pair(k_cache, v_cache, chunk.block_table, chunk.context, buffers)
            keys, values = keys.unsqueeze(0), values.unsqueeze(0)  # (1, K, L, D)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=chunk.mask, is_causal=chunk.mask is None, enable_gqa=gqa
        )
        out[chunk.token_slice] = attended.squeeze(0).transpose(0, 1)
    return out


def _rows(token_index: torch.Tensor | slice, start: int, count: int) -> torch.Tensor | slice:
    """Rows start..start+count of a decode group: a slice of consecutive rows stays a slice, so
    its queries are a view and its outputs a plain copy rather than gather and scatter."""
    if isinstance(token_index, slice):
        first = token_index.start + start
        return slice(first, min(first + count, token_index.stop))
    return token_index[start : start + count]


def causal_mask(start: int, num_tokens: int, context: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(T, L): query start + i may see key j when j <= start + i (and start + i - j < window)."""
    query_positions = torch.arange(start, start + num_tokens, device=device)[:, None]
    key_positions = torch.arange(context, device=device)[None, :]
    allowed = key_positions <= query_positions
    if window is not None:
        allowed &= query_positions - key_positions < window
    return allowed
