"""The engine process's malloc keeps freed blocks: large tensors stop faulting their pages in again."""

from __future__ import annotations

import platform
import resource

import torch

from tokenworks.engine.malloc_tuning import keep_freed_memory

BYTES = 48 * 2**20  # above glibc's largest default mmap threshold (32 MiB)


def page_faults_of_a_clone(source: torch.Tensor) -> int:
    """Pages faulted in while a clone of `source` is made and freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    source.clone()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_large_tensors_are_reused_without_page_faults() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    source = torch.ones(BYTES // 4)
    # The first clones may grow the heap; after other tests it may also take a second one to
    # find a free block that fits (seen once in a full-suite run, never alone).
    for _ in range(2):
        source.clone()
    faults = [page_faults_of_a_clone(source) for _ in range(8)]
    # Each fresh mapping faults all its pages in (12,288 of 4 KiB): without the tuning every clone does.
    reused = sum(count < 1000 for count in faults)
    assert reused >= 6, f"page faults of each clone: {faults}"
