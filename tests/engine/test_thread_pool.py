"""The kernels' own threads (kernels/thread_pool.h): the same bits as OpenMP's, every policy.

The engine runs a step of a few rows on the kernels' threads and a larger one on OpenMP's
(model_runner.py); each output element is computed whole by one thread either way, so the
two must agree exactly, whatever the spin time and thread count.
"""

from __future__ import annotations

import pytest
import torch

from tokenworks.engine.model_runner import SPIN_US

from .conftest import compiled_kernels


@pytest.fixture
def kernels():
    module = compiled_kernels()
    before = torch.get_num_threads()
    yield module
    module.set_threads(False, 0)
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("spin_us", [0, SPIN_US, 5_000])
def test_own_threads_compute_the_same_products_as_openmp(kernels, threads: int, spin_us: int) -> None:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(threads * 7 + spin_us)
    weight = torch.randn(1_000, 96, generator=generator)
    bias = torch.randn(1_000, generator=generator)
    results = {}
    for own in (False, True):
        kernels.set_threads(own, spin_us)
        assert kernels.own_threads() is own
        assert kernels.spin_microseconds() == (spin_us if own else 0)
        results[own] = [kernels.linear_small_batch(torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows)), weight, bias) for rows in (1, 2, 3, 4)]  # fmt: skip
    for openmp, own in zip(results[False], results[True], strict=True):
        assert torch.equal(openmp, own)


def test_an_error_inside_a_loop_on_own_threads_is_raised_once_every_thread_is_done(kernels) -> None:
    torch.set_num_threads(2)
    kernels.set_threads(True, SPIN_US)
    blocks, block_size, kv_heads, dim = 4, 8, 2, 16
    cache = torch.randn(blocks, block_size, kv_heads, dim)
    q = torch.randn(4, kv_heads, dim)
    tables = torch.tensor([[0], [1], [2], [3]])
    rows = torch.arange(4)
    lengths = torch.tensor([3, 5, 8, block_size + 1])  # the last is longer than its one block: checked in the loop
    with pytest.raises(RuntimeError, match="context length"):
        kernels.paged_decode_attention(torch.empty_like(q), q, rows, cache, cache, tables, lengths, 0.25, 0)
    lengths[3] = 2  # the threads are still there, and right, after the error
    out = {}
    for own in (True, False):
        kernels.set_threads(own, SPIN_US)
        out[own] = torch.empty_like(q)
        kernels.paged_decode_attention(out[own], q, rows, cache, cache, tables, lengths, 0.25, 0)
    assert torch.equal(out[True], out[False])
