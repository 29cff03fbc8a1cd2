"""The step's matrix products: oneDNN's on CPUs where torch has it, `F.linear` everywhere else.

On CPU, `F.linear` runs MKL's sgemm, which on AMD processors takes a code path about half
as fast as oneDNN's (measured on an AVX-512 EPYC, 2 threads: 190 against 420 GFLOP/s at 256
rows), and its one-row product streams the weights at about half the memory bandwidth.
oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op `torch.compile` itself
emits for CPU linears) reads the same plain weight tensor, so nothing is copied or packed.
Where the op is missing, or the device is not a CPU, or its result disagrees with
`F.linear` on a probe, the step uses `F.linear`.

A decode step of one or two sequences multiplies one or two rows by every weight, so its
time is the time to read the weights. For matrices of up to a few MB the compiled kernel of
kernels/cpu_kernels.cpp, which splits the weight rows across the threads, reads them
faster than oneDNN does (a 576x1536 matrix from memory: 115 against 150-195 us on 2 threads
of an AVX-512 EPYC), and it costs 3-5 us where oneDNN's call costs 13-19; for larger ones
(a 3072x576 MLP, a language-model head) oneDNN reads faster and keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

# Where the compiled kernel beats oneDNN: up to 2 rows (equal at 2, oneDNN ahead from 4 on)
# of weights up to 4 MiB.
SMALL_BATCH_ROWS = 2
SMALL_WEIGHT_BYTES = 4 * 2**20


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, in) @ (out, in)^T + bias -> (N, out) through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def with_small_batch_kernel(large: LinearFn, kernels: ModuleType) -> LinearFn:
    """`large` for many rows; the compiled kernel for the few rows of a small decode step."""
    small = kernels.linear_small_batch
    small_weight = SMALL_WEIGHT_BYTES // 4  # elements of float32

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] <= SMALL_BATCH_ROWS and weight.numel() <= small_weight and x.dtype == torch.float32:
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
    if kernels is not None and backend == "auto" and device.type == "cpu" and dtype == torch.float32:
        return with_small_batch_kernel(
            linear, kernels
        ), f"{reason}; the compiled kernel for up to {SMALL_BATCH_ROWS} rows of weights up to 4 MiB"
    return linear, reason


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
