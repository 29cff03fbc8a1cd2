"""Paged attention and the step's matrix products against plain dense computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenworks.engine.attention import (
    DecodeGroup,
    GatherBuffers,
    PrefillChunk,
    PrefillGroup,
    causal_mask,
    paged_attention,
)
from tokenworks.engine.linear import SMALL_BATCH_ROWS, Matrix, choose_linear, onednn_linear

from .conftest import compiled_kernels

BLOCK, KV_HEADS, HEADS, DIM = 16, 2, 4, 64


def _cache_with(sequences: list[torch.Tensor], num_blocks: int, generator: torch.Generator, size: int = BLOCK):
    """A (num_blocks, size, K, D) cache holding each (L, K, D) sequence in shuffled blocks."""
    cache = torch.randn(num_blocks, size, KV_HEADS, DIM, generator=generator)  # garbage elsewhere
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables = []
    for values in sequences:
        blocks = [order.pop() for _ in range(-(-values.shape[0] // size))]
        for index, block in enumerate(blocks):
            part = values[index * size : (index + 1) * size]
            cache[block, : part.shape[0]] = part
        tables.append(blocks)
    return cache, tables


def _dense(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool, window: int | None = None
) -> torch.Tensor:
    """(T, H, D) queries over (L, K, D) keys, each query head on its group's key head."""
    group = HEADS // KV_HEADS
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    length, count = keys.shape[0], query.shape[0]
    mask = causal_mask(length - count, count, length, window, torch.device("cpu")) if causal else None
    out = F.scaled_dot_product_attention(query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), mask)
    return out.transpose(0, 1)


@pytest.mark.parametrize("window", [None, 37])
@pytest.mark.parametrize("consecutive", [True, False])
@pytest.mark.parametrize("path", ["gather and SDPA", "compiled kernel"])
@pytest.mark.parametrize("size", [BLOCK, 128])  # the kernel prefetches 12 slots on: across blocks, or within
def test_decode_over_the_paged_cache_equals_dense_attention(
    path: str, consecutive: bool, window: int | None, size: int
) -> None:
    # 40 sequences of up to 20 blocks: more than one group of gathered keys (8 MB each).
    kernels = compiled_kernels() if path == "compiled kernel" else None
    generator = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.randint(1, 20 * size + 1, (40,), generator=generator)]
    lengths[0] = 20 * size
    keys = [torch.randn(n, KV_HEADS, DIM, generator=generator) for n in lengths]
    values = [torch.randn(n, KV_HEADS, DIM, generator=generator) for n in lengths]
    k_cache, tables = _cache_with(keys, 900, generator, size)
    v_cache = torch.zeros_like(k_cache)
    for table, sequence in zip(tables, values, strict=True):
        flat = torch.cat([sequence, torch.zeros(len(table) * size - sequence.shape[0], KV_HEADS, DIM)])
        v_cache[table] = flat.view(len(table), size, KV_HEADS, DIM)
    width = max(map(len, tables))
    padded = torch.tensor([table + [0] * (width - len(table)) for table in tables])
    context = torch.tensor(lengths)[:, None]
    positions = torch.arange(width * size)[None, :]
    mask = positions < context
    if window is not None:
        mask &= (context - 1) - positions < window
    # Rows of the step's batch: 0..39 in order, or interleaved with rows of other work; other
    # work (prefill tokens) after them either way.
    rows = torch.arange(40) if consecutive else torch.arange(40) * 2 + 1
    q = torch.randn(int(rows[-1]) + 6, HEADS + KV_HEADS, DIM, generator=generator)[:, :HEADS]  # strided, as in a step
    token_index = slice(0, 40) if consecutive else rows
    decode = DecodeGroup(token_index, padded, mask[:, None, None, :], rows, torch.tensor(lengths), window)
    out = paged_attention(q, q, q, k_cache, v_cache, decode, [], GatherBuffers(), kernels)
    for sequence, row in enumerate(rows.tolist()):
        expected = _dense(q[row : row + 1], keys[sequence], values[sequence], causal=True, window=window)
        torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-5, atol=1e-5)


def test_a_prefill_chunk_after_a_cached_prefix_equals_dense_causal_attention() -> None:
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(45, KV_HEADS, DIM, generator=generator)
    values = torch.randn(45, KV_HEADS, DIM, generator=generator)
    k_cache, (table,) = _cache_with([keys], 8, generator)
    v_cache = torch.zeros_like(k_cache)
    v_cache.view(-1, KV_HEADS, DIM)[
        torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in range(45)])
    ] = values  # fmt: skip
    q = torch.randn(13, HEADS, DIM, generator=generator)  # the last 13 of 45 tokens
    chunk = PrefillChunk(slice(0, 13), torch.tensor(table), causal_mask(32, 13, 45, None, torch.device("cpu")), 45)
    out = paged_attention(q, keys[32:], values[32:], k_cache, v_cache, None, [chunk], GatherBuffers())
    torch.testing.assert_close(out, _dense(q, keys, values, causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 37])
def test_compiled_prefill_chunks_over_the_paged_cache_equal_dense_causal_attention(window: int | None) -> None:
    """Fresh prompts and chunks after a cached prefix, in one call; lengths across the kernel's
    tiles (32 query tokens of 2 heads with AVX-512, 16 with AVX2; 32 keys) and the cache's
    16-token blocks."""
    kernels = compiled_kernels()
    generator = torch.Generator().manual_seed(3)
    spans = [(0, 150), (0, 2), (32, 13), (100, 70), (5, 1), (0, 33)]  # (tokens before the chunk, chunk tokens)
    keys = [torch.randn(start + count, KV_HEADS, DIM, generator=generator) for start, count in spans]
    values = [torch.randn(start + count, KV_HEADS, DIM, generator=generator) for start, count in spans]
    k_cache, tables = _cache_with(keys, 60, generator)
    v_cache = torch.randn_like(k_cache)
    for table, sequence in zip(tables, values, strict=True):
        slots = torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in range(sequence.shape[0])])
        v_cache.view(-1, KV_HEADS, DIM)[slots] = sequence
    counts = [count for _, count in spans]
    first_rows = torch.tensor([0, *counts[:-1]]).cumsum(0)
    q = torch.randn(sum(counts), HEADS + 2 * KV_HEADS, DIM, generator=generator)[:, :HEADS]  # strided, as in a step
    width = max(map(len, tables))
    group = PrefillGroup(
        first_rows, torch.tensor(counts), torch.tensor([start + count for start, count in spans]),
        torch.tensor([table + [0] * (width - len(table)) for table in tables]), window,
    )  # fmt: skip
    out = paged_attention(q, q, q, k_cache, v_cache, None, group, GatherBuffers(), kernels)
    for count, row, sequence_keys, sequence_values in zip(counts, first_rows.tolist(), keys, values, strict=True):
        expected = _dense(q[row : row + count], sequence_keys, sequence_values, causal=True, window=window)
        torch.testing.assert_close(out[row : row + count], expected, rtol=1e-5, atol=1e-5)


def test_the_compiled_prefill_takes_as_many_query_heads_a_key_head_as_its_tile_has_rows() -> None:
    """Its tile is four vectors of query rows (64 with AVX-512, 32 with AVX2, 16 elsewhere): a
    group that fills it equals dense attention, one twice as large is refused, naming the limit."""
    kernels = compiled_kernels()
    limit = kernels.prefill_attention_max_group()
    assert limit in (16, 32, 64)
    generator = torch.Generator().manual_seed(5)
    dim, tokens = 16, 5
    k_cache = torch.randn(2, BLOCK, 1, dim, generator=generator)
    v_cache = torch.randn(2, BLOCK, 1, dim, generator=generator)
    table, rows = torch.tensor([[1]]), torch.tensor([0])
    counts = contexts = torch.tensor([tokens])  # one fresh prompt of 5 tokens
    q = torch.randn(tokens, limit, dim, generator=generator)
    out = torch.empty_like(q)
    kernels.paged_prefill_attention(out, q, k_cache, v_cache, table, rows, counts, contexts, dim**-0.5, 0)
    keys = k_cache[1, :tokens].expand(tokens, limit, dim).transpose(0, 1)  # (H, L, D): one key head for all
    values = v_cache[1, :tokens].expand(tokens, limit, dim).transpose(0, 1)
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask).transpose(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    wide = torch.randn(tokens, 2 * limit, dim, generator=generator)
    with pytest.raises(RuntimeError, match=f"at most {limit} query heads per key head"):
        kernels.paged_prefill_attention(torch.empty_like(wide), wide, k_cache, v_cache, table, rows, counts, contexts,
                                        dim**-0.5, 0)  # fmt: skip


def test_gather_buffers_are_reused_until_a_step_needs_more() -> None:
    buffers = GatherBuffers()
    like = torch.empty(0)
    first = buffers.take("k", like, 4, 8)
    assert first.shape == (4, 8)
    assert buffers.take("k", like, 2, 8).data_ptr() == first.data_ptr()  # smaller: the same memory
    assert buffers.take("v", like, 2, 8).data_ptr() != first.data_ptr()  # keys and values apart
    grown = buffers.take("k", like, 5, 8)
    assert grown.shape == (5, 8)
    assert buffers.take("k", like, 4, 8).data_ptr() == grown.data_ptr()


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("pack_weights", [False, True])
def test_the_chosen_linear_equals_f_linear(rows: int, with_bias: bool, pack_weights: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=generator)
    weight = torch.randn(200, 96, generator=generator)
    bias = torch.randn(200, generator=generator) if with_bias else None
    linear = choose_linear(torch.device("cpu"), torch.float32, pack_weights=pack_weights)
    onednn = torch.backends.mkldnn.is_available()
    assert (linear.large is onednn_linear) == onednn, linear.reason
    matrix = linear.prepare(weight)
    assert matrix.weight is weight
    assert (matrix.packed is not None) == (onednn and pack_weights), linear.reason
    torch.testing.assert_close(linear(x, matrix, bias), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_features", [64, 100, 1536])  # whole vectors, a remainder, a long row
@pytest.mark.parametrize("rows", [1, SMALL_BATCH_ROWS])
def test_the_compiled_small_batch_linear_equals_f_linear(rows: int, in_features: int) -> None:
    kernels = compiled_kernels()
    generator = torch.Generator().manual_seed(in_features)
    x = torch.randn(rows, in_features + 7, generator=generator)[:, :in_features]  # rows apart by more than a row
    weight = torch.randn(203, in_features, generator=generator)
    bias = torch.randn(203, generator=generator)
    linear = choose_linear(torch.device("cpu"), torch.float32, "auto", kernels)
    assert "compiled kernel" in linear.reason and linear.small is kernels.linear_small_batch
    for b in (None, bias):
        expected = F.linear(x, weight, b)
        torch.testing.assert_close(kernels.linear_small_batch(x, weight, b), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(linear(x, Matrix(weight), b), expected, rtol=1e-5, atol=1e-4)


def test_kernels_torch_and_other_devices_take_f_linear() -> None:
    for device, backend, reason in (
        ("cpu", "torch", "F.linear (asked for)"),
        ("cuda", "auto", "F.linear (device cuda)"),
    ):
        linear = choose_linear(torch.device(device), torch.float32, backend, pack_weights=True)
        assert (linear.large, linear.small, linear.reason) == (F.linear, None, reason)
        assert linear.prepare(torch.ones(2, 2)).packed is None
