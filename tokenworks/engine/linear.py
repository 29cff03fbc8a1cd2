"""The step's matrix products: oneDNN's on CPUs where torch has it, `F.linear` everywhere else.

On CPU, `F.linear` runs MKL's sgemm, which on AMD processors takes a code path about half
as fast as oneDNN's (measured on an AVX-512 EPYC, 2 threads: 190 against 420 GFLOP/s at 256
rows), and its one-row product streams the weights at about half the memory bandwidth.
oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op `torch.compile` itself
emits for CPU linears) reads the same plain weight tensor, so nothing is copied or packed.
Where the op is missing, or the device is not a CPU, or its result disagrees with
`F.linear` on a probe, the step uses `F.linear`.

A decode step of a few sequences multiplies a few rows by every weight, so its time is the
time to read the weights. There the compiled kernel of kernels/cpu_kernels.cpp, which splits
the weight rows across the threads, reads them faster than oneDNN (2 threads of an AVX-512
EPYC, matrices from memory, one row: a 3072x576 MLP 166 against 189 us, a 16384x576
language-model head 865 against 1,085 us; at 4 rows 193 against 240 and 1,095 against
1,163 us; at 8 rows oneDNN is ahead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

SMALL_BATCH_ROWS = 4  # up to here the compiled kernel beats oneDNN (measured above)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, in) @ (out, in)^T + bias -> (N, out) through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def with_small_batch_kernel(large: LinearFn, kernels: ModuleType) -> LinearFn:
    """`large` for many rows; the compiled kernel for the few rows of a small decode step."""
    small = kernels.linear_small_batch

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] <= SMALL_BATCH_ROWS and x.dtype == torch.float32:
            return small(x, weight, bias)
        return large(x, weight, bias)

    return linear


def choose_linear(
    device: torch.device, dtype: torch.dtype, backend: str = "auto", kernels: ModuleType | None = None
) -> tuple[LinearFn, str]:
    """The linear function for this device and dtype, and why it was chosen (for the log).

    backend "torch" forces `F.linear`; "auto" takes oneDNN on CPU when a probe agrees with it,
    and the compiled small-batch kernel of `kernels` (when given) for float32 steps of few rows.
    """
    linear, reason = _choose_large(device, dtype, backend)
    if kernels is None or backend != "auto" or device.type != "cpu" or dtype != torch.float32:
        return linear, reason
    return with_small_batch_kernel(linear, kernels), f"{reason}; the compiled kernel up to {SMALL_BATCH_ROWS} rows"


def _choose_large(device: torch.device, dtype: torch.dtype, backend: str) -> tuple[LinearFn, str]:
    if backend == "torch":
        return F.linear, "F.linear (asked for)"
    if device.type != "cpu":
        return F.linear, f"F.linear (device {device.type})"
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return F.linear, "F.linear (this torch has no oneDNN)"
    reason = _probe(dtype)
    if reason is not None:
        return F.linear, f"F.linear ({reason})"
    return onednn_linear, "oneDNN inner product"


def _probe(dtype: torch.dtype) -> str | None:
    """None when oneDNN's product of a small random case matches F.linear's; else why not."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, generator=generator).to(dtype)
    weight = torch.randn(24, 40, generator=generator).to(dtype)
    bias = torch.randn(24, generator=generator).to(dtype)
    try:
        result = onednn_linear(x, weight, bias)
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        return f"oneDNN linear failed: {error}"
    expected = F.linear(x, weight, bias)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if result.dtype != dtype or not torch.allclose(result.float(), expected.float(), rtol=tolerance, atol=tolerance):
        return f"oneDNN linear disagrees with F.linear in {dtype}"
    return None
