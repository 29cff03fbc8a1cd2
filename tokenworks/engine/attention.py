"""Attention over the paged KV cache.

The cache of one layer is two tensors of shape (num_blocks, block_size, K, D): K key/value
heads of D dims per token slot. A request's tokens live in the blocks of its block table,
in order, so token position p sits in block `table[p // block_size]` at offset
`p % block_size`. Shapes below: N tokens in the step, H query heads, L keys attended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class DecodeGroup:
    """Requests computing one token each: attended together in one padded batch."""

    token_index: torch.Tensor  # (B,) rows of the step's flat token batch
    block_table: torch.Tensor  # (B, max_blocks) block ids, padded with 0
    mask: torch.Tensor  # (B, 1, 1, L) True where the key is attended


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


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """(..., blocks) block ids -> (..., K, length, D) keys or values in position order."""
    heads, dim = cache.shape[2:]
    # index_select of whole blocks as flat rows: a memcpy per block, several times faster
    # than advanced indexing of the 4-d cache.
    rows = cache.view(cache.shape[0], -1).index_select(0, block_table.flatten())
    gathered = rows.view(*block_table.shape[:-1], -1, heads, dim)[..., :length, :, :]  # (..., positions, K, D)
    return gathered.transpose(-3, -2)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    decode: DecodeGroup | None,
    prefills: list[PrefillChunk],
) -> torch.Tensor:
    """(N, H, D) queries (keys and values already written to the cache) -> (N, H, D) outputs."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k_cache.shape[2]
    if decode is not None:
        length = decode.mask.shape[-1]
        keys = _gather(k_cache, decode.block_table, length)  # (B, K, L, D)
        values = _gather(v_cache, decode.block_table, length)
        queries = q[decode.token_index].unsqueeze(2)  # (B, H, 1, D)
        attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=decode.mask, enable_gqa=gqa)
        out[decode.token_index] = attended.squeeze(2)
    for chunk in prefills:
        queries = q[chunk.token_slice].transpose(0, 1).unsqueeze(0)  # (1, H, T, D)
        if chunk.mask is None:  # nothing before this chunk: attend to its own keys, causally
            keys = k[chunk.token_slice].transpose(0, 1).unsqueeze(0)  # (1, K, T, D)
            values = v[chunk.token_slice].transpose(0, 1).unsqueeze(0)
        else:
            keys = _gather(k_cache, chunk.block_table, chunk.context).unsqueeze(0)  # (1, K, L, D)
            values = _gather(v_cache, chunk.block_table, chunk.context).unsqueeze(0)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=chunk.mask, is_causal=chunk.mask is None, enable_gqa=gqa
        )
        out[chunk.token_slice] = attended.squeeze(0).transpose(0, 1)
    return out


def causal_mask(start: int, num_tokens: int, context: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(T, L): query start + i may see key j when j <= start + i (and start + i - j < window)."""
    query_positions = torch.arange(start, start + num_tokens, device=device)[:, None]
    key_positions = torch.arange(context, device=device)[None, :]
    allowed = key_positions <= query_positions
    if window is not None:
        allowed &= query_positions - key_positions < window
    return allowed
