"""Compiled CPU kernels for the engine's steps (cpu_kernels.cpp), built on first use.

torch's C++ extension tooling compiles the source with g++ and ninja, about 20 s on 2
cores, and caches the library under ~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR), so
later engines load it in a moment; a file lock there serialises concurrent first builds.
The build targets the CPU it runs on (-march=native), so the library's name carries a
digest of the source and of the CPU's model and instruction-set flags: a cache shared by
different machines never hands one of them code for the other.

Where the build fails (no compiler, a torch without its headers) or the result disagrees
with PyTorch on a probe, the engine runs its PyTorch paths and logs why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# -fopenmp: ATen's parallel_for is a header whose OpenMP pragma compiles to nothing without it,
# which left the kernels on one thread. The library then needs libgomp.so.1, and the dynamic
# linker hands it the copy torch already loaded (same soname): one OpenMP runtime, one pool.
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp"]


@functools.cache
def cpu_kernels() -> tuple[ModuleType | None, str]:
    """The compiled module, or None; and the reason, for the log."""
    try:
        from torch.utils.cpp_extension import load
    except ImportError as error:  # torch's extension tooling needs setuptools
        return None, f"PyTorch ops (no C++ extension tooling: {error})"
    name = f"tokenworks_cpu_kernels_{_build_digest()}"
    logger.info("loading the CPU kernels %s (compiled on first use on a machine, about 20 s)", name)
    started = time.perf_counter()
    try:
        module = load(
            name=name, sources=[str(SOURCE)], extra_cflags=COMPILE_FLAGS, extra_ldflags=["-fopenmp"], verbose=False
        )
    except Exception as error:  # a compiler error, a missing ninja or g++: the PyTorch paths still work
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"PyTorch ops (the CPU kernels did not build: {first_line})"
    seconds = time.perf_counter() - started
    problem = _probe(module)
    if problem is not None:
        return None, f"PyTorch ops ({problem})"
    return module, f"compiled CPU kernels ({name}, loaded in {seconds:.1f} s)"


def _build_digest() -> str:
    """Source, flags, torch version and this CPU: what the compiled library depends on."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_identity().encode())
    return digest.hexdigest()[:16]


def _cpu_identity() -> str:
    """The model name and flag lines of /proc/cpuinfo's first processor ('' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    first = text.split("\n\n", 1)[0]
    return "\n".join(
        line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")
    )


def _probe(module: ModuleType) -> str | None:
    """None when the kernels agree with PyTorch on small random cases; else what differs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 100, generator=generator)
    weight = torch.randn(70, 100, generator=generator)
    bias = torch.randn(70, generator=generator)
    if not torch.allclose(module.linear_small_batch(x, weight, bias), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4):
        return "the compiled linear disagrees with F.linear"
    # One sequence of 5 tokens in blocks [2, 0] of 4 slots, 2 key/value heads, 4 query heads.
    k_cache = torch.randn(3, 4, 2, 8, generator=generator)
    v_cache = torch.randn(3, 4, 2, 8, generator=generator)
    q = torch.randn(1, 4, 8, generator=generator)
    out = torch.empty_like(q)
    table = torch.tensor([[2, 0]])
    module.paged_decode_attention(out, q, torch.tensor([0]), k_cache, v_cache, table, torch.tensor([5]), 8**-0.5, 0)
    keys = k_cache[table[0]].reshape(8, 2, 8)[:5].repeat_interleave(2, dim=1).transpose(0, 1)  # (H, L, D)
    values = v_cache[table[0]].reshape(8, 2, 8)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values).transpose(0, 1)
    if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
        return "the compiled decode attention disagrees with scaled_dot_product_attention"
    # The last 3 of those 5 tokens as a prefill chunk (head size 16: the kernel's vectors).
    k_cache, v_cache = torch.randn(3, 4, 2, 16, generator=generator), torch.randn(3, 4, 2, 16, generator=generator)
    q = torch.randn(3, 4, 16, generator=generator)
    out = torch.empty_like(q)
    count, first = torch.tensor([3]), torch.tensor([0])
    module.paged_prefill_attention(out, q, k_cache, v_cache, table, first, count, torch.tensor([5]), 16**-0.5, 0)
    keys = k_cache[table[0]].reshape(8, 2, 16)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    values = v_cache[table[0]].reshape(8, 2, 16)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    mask = torch.arange(5)[None, :] <= torch.arange(2, 5)[:, None]
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask).transpose(0, 1)
    if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
        return "the compiled prefill attention disagrees with scaled_dot_product_attention"
    logits = torch.randn(3, 37, generator=generator)
    logits[1, [4, 30]] = 9.0  # a tie: the first one counts
    if not torch.equal(module.greedy_tokens(logits), logits.argmax(dim=-1)):
        return "the compiled greedy_tokens disagrees with argmax"
    hidden, scale = torch.randn(3, 40, generator=generator), torch.randn(40, generator=generator)
    if not torch.allclose(module.rms_norm(hidden, scale, 1e-6), F.rms_norm(hidden, (40,), scale, 1e-6), atol=1e-5):
        return "the compiled rms_norm disagrees with F.rms_norm"
    return None
