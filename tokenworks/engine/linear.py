"""The step's matrix products: oneDNN's on CPUs where torch has it, `F.linear` everywhere else.

On CPU, `F.linear` runs MKL's sgemm, which on AMD processors takes a code path about half
as fast as oneDNN's (measured on an AVX-512 EPYC, 2 threads: 190 against 420 GFLOP/s at 256
rows), and its one-row product streams the weights at about half the memory bandwidth.
oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op `torch.compile` itself
emits for CPU linears) reads a plain weight tensor, or one packed beforehand into its own
blocked layout, which it otherwise reorders on every call: packed, the products of the
benchmark's matrices ran 2.2-2.8x faster at 8 rows, 1.3-1.8x at 32 and 1.04-1.17x at 256 and
more (2 threads of an AVX-512 EPYC), at the cost of a second copy of the weights. Where the op
is missing, or the device is not a CPU, or its result disagrees with `F.linear` on a probe, the
step uses `F.linear`.

A decode step of a few sequences multiplies a few rows by every weight, so its time is the
time to read the weights. There the compiled kernel of kernels/products.cpp, which splits
the weight rows across the threads, reads the plain weights faster than oneDNN's plain path
(2 threads of an AVX-512 EPYC, matrices from memory, one row: a 3072x576 MLP 166 against
189 us, a 16384x576 language-model head 865 against 1,085 us; at 4 rows 193 against 240 and
1,095 against 1,163 us; at 8 rows oneDNN is ahead). On a 2-core Intel Xeon (one thread) the
kernel wins at one row (a decode step of the small model 29-32 against 33-34 ms, of the tiny one
1.1 against 1.8-2.0) and on tiny up to 4 rows (1.1-1.5 against 1.7-2.2 ms); on small at 2 to 4
rows, prefetching the weights (products.cpp), it is level with oneDNN or up to 16% slower (35-46
against 34-42 ms; 1.4x slower without the prefetch), so SMALL_BATCH_ROWS stays at 4.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

SMALL_BATCH_ROWS = 4  # up to here the compiled kernel beats oneDNN or nearly (measured above)
PACKING_ROWS_HINT = 256  # oneDNN picks its blocked layout for this many rows (any from 32 gave the same speed)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, in) @ (out, in)^T + bias -> (N, out) through oneDNN; weight plain or packed."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@dataclass(frozen=True, slots=True)
class Matrix:
    """One weight matrix as the step's products read it."""

    weight: torch.Tensor  # (out, in), row-major: F.linear, oneDNN and the compiled kernels read it
    packed: torch.Tensor | None = None  # oneDNN's blocked copy, for products of many rows


class Linear:
    """y = x W^T + b for the step: `large` for many rows (oneDNN or F.linear), the compiled
    kernel (`small`, when given) for float32 steps of up to SMALL_BATCH_ROWS rows."""

    def __init__(self, large: LinearFn, reason: str, small: LinearFn | None = None, pack: bool = False) -> None:
        self.large, self.small, self.reason = large, small, reason
        self.packs = pack  # whether `prepare` adds oneDNN's packed copy

    def prepare(self, weight: torch.Tensor) -> Matrix:
        """The matrix as this Linear will read it (packed once here, when it packs)."""
        if not self.packs:
            return Matrix(weight)
        return Matrix(weight, torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT))

    def __call__(self, x: torch.Tensor, matrix: Matrix, bias: torch.Tensor | None) -> torch.Tensor:
        if self.small is not None and x.shape[0] <= SMALL_BATCH_ROWS and x.dtype == torch.float32:
            return self.small(x, matrix.weight, bias)
        return self.large(x, matrix.weight if matrix.packed is None else matrix.packed, bias)


def choose_linear(
    device: torch.device,
    dtype: torch.dtype,
    backend: str = "auto",
    kernels: ModuleType | None = None,
    pack_weights: bool = False,
) -> Linear:
    """The step's Linear for this device and dtype; its `reason` says what it chose, for the log.

    backend "torch" forces `F.linear`; "auto" takes oneDNN on CPU when a probe agrees with it
    (with packed weights when `pack_weights` and packing passes the probe too), and the compiled
    small-batch kernel of `kernels` (when given) for float32 steps of few rows.
    """
    large, reason = _choose_large(device, dtype, backend)
    pack = False
    if large is onednn_linear and pack_weights:
        problem = _probe(dtype, packed=True)
        pack = problem is None
        reason += ", weights packed" if pack else f" (weights not packed: {problem})"
    if kernels is None or backend != "auto" or device.type != "cpu" or dtype != torch.float32:
        return Linear(large, reason, pack=pack)
    reason += f"; the compiled kernel up to {SMALL_BATCH_ROWS} rows"
    return Linear(large, reason, kernels.linear_small_batch, pack)


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


def _probe(dtype: torch.dtype, packed: bool = False) -> str | None:
    """None when oneDNN's product of a small random case (with the weight packed first, if
    `packed`) matches F.linear's; else why not."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, generator=generator).to(dtype)
    weight = torch.randn(24, 40, generator=generator).to(dtype)
    bias = torch.randn(24, generator=generator).to(dtype)
    try:
        operand = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT) if packed else weight
        result = onednn_linear(x, operand, bias)
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        return f"oneDNN linear failed: {error}"
    expected = F.linear(x, weight, bias)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if result.dtype != dtype or not torch.allclose(result.float(), expected.float(), rtol=tolerance, atol=tolerance):
        return f"oneDNN linear disagrees with F.linear in {dtype}"
    return None
