"""The engine process's malloc keeps freed blocks: large tensors stop faulting their pages in again."""

from __future__ import annotations

import platform
import resource

import torch

from tokenworks.engine.host_memory import keep_freed_memory


def test_freed_large_tensors_are_reused_without_page_faults() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    source = torch.ones(48 * 2**20 // 4)  # 48 MiB: above glibc's largest default mmap threshold
    source.clone()  # the first one may grow the heap
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        source.clone()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 1000  # each fresh mapping would fault 12,288 pages in
