"""The huge-page arena: tensors of zeros, aligned, held apart, and refused beyond its size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenworks.engine.huge_pages import HUGE_PAGE_BYTES, HugePageArena, aligned_bytes, huge_pages_available


def test_tensors_taken_from_an_arena_are_zeros_on_cache_lines_and_do_not_overlap() -> None:
    arena = HugePageArena(3 * 2**20)
    first = arena.take((1000, 3), torch.float32)
    second = arena.take((7,), torch.int64)
    assert first.data_ptr() % HUGE_PAGE_BYTES == 0  # the arena starts on a huge page
    assert second.data_ptr() % 64 == 0
    assert second.data_ptr() >= first.data_ptr() + first.numel() * 4
    assert torch.count_nonzero(first) == 0 and torch.count_nonzero(second) == 0
    first.fill_(1.5)
    second.fill_(-1)
    assert first.sum().item() == 4500.0 and second.sum().item() == -7


def test_copies_keep_their_values_after_the_arena_object_is_gone() -> None:
    arena = HugePageArena(1024)
    source = torch.arange(12, dtype=torch.float32).view(3, 4)
    copy = arena.copy_in(source)
    del arena
    assert torch.equal(copy, source)
    copy += 1  # writable memory
    assert copy[2, 3].item() == 12.0


def test_an_arena_refuses_what_does_not_fit() -> None:
    tensors = [torch.ones(10), torch.ones(3, 5)]
    assert aligned_bytes(tensors) == 64 + 64  # each rounded up to a cache line
    arena = HugePageArena(aligned_bytes(tensors))
    for tensor in tensors:
        arena.copy_in(tensor)
    with pytest.raises(MemoryError, match="cannot hold 4 more"):
        arena.take((1,), torch.float32)


def test_the_kernel_backs_a_touched_arena_with_huge_pages_where_it_grants_them() -> None:
    if not huge_pages_available():
        pytest.skip("transparent huge pages are off on this machine")
    arena = HugePageArena(4 * HUGE_PAGE_BYTES)
    tensor = arena.take((4 * HUGE_PAGE_BYTES // 4,), torch.float32)
    tensor.fill_(1.0)  # touch every page
    start = tensor.data_ptr()
    smaps = Path("/proc/self/smaps").read_text().split("\n")
    for index, line in enumerate(smaps):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields[0].split("-")) == 2:
            try:
                low, high = (int(part, 16) for part in fields[0].split("-"))
            except ValueError:
                continue
            if low <= start < high:
                huge_kb = next(int(row.split()[1]) for row in smaps[index:] if row.startswith("AnonHugePages:"))
                assert huge_kb >= 2048, "no huge page backs the arena"
                return
    pytest.fail("the arena's mapping is not in /proc/self/smaps")
