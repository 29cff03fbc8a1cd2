"""Step-latency models (`StepLatency`): how long an engine step of a given shape takes.

All three price a step from its shape alone, and none imports torch:

- `FittedLatency`: this machine, from a profile. A roofline core, the larger of compute time and
  memory time, plus what a step costs besides its FLOPs and bytes:
      seconds = max(FLOPs / (e_flops x peak FLOP/s), bytes / (e_bw x bandwidth))
                + step overhead + chunk overhead x chunks + row overhead(rows)
  with the peaks measured by the profile and e_flops, e_bw and the overheads fitted to its
  samples (least squares on relative error). The row overhead is what a step of few rows (its
  tokens) costs beyond that line (`RowOverheads`).
- `DatasheetLatency`: a GPU without a profile, from the catalog's datasheet figures and stated
  efficiency assumptions, plus tensor parallelism's all-reduces.
- `ConstantLatency`: every step the same time, for queueing tests with known answers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.hardware import GPU, Assumptions, Catalog, tensor_parallel_seconds
from tokenworks.plan.profiles import Profile, Sample
from tokenworks.plan.roofline import StepCost, chunk_totals, dtype_bytes, linear_parameters, step_cost, totals_cost
from tokenworks.plan.step import StepShape

# Steps of fewer rows than this (their tokens) get a fixed cost of their own (RowOverheads); from
# here on the products run at the efficiency the fit finds (a 128-token prefill of the tiny model
# within 4% of the line through the larger ones, on a 2-core AVX2 EPYC).
ROW_OVERHEAD_LIMIT = 128

# The efficiencies searched, relative to the measured peaks: a CPU engine's small products and
# attention loops reach a few percent of the big-matmul peak; a fused kernel can beat a plain
# copy's bandwidth. 100 log-spaced values, then a finer search around the best pair.
_EFFICIENCIES = np.geomspace(0.003, 30.0, 100)


@dataclass(frozen=True, slots=True)
class FitError:
    """Relative error |predicted - measured| / measured over a profile's samples."""

    median: float
    max: float
    samples: int


@dataclass(frozen=True, slots=True)
class RowOverheads:
    """What a step of `rows` rows (its tokens) costs beyond the roofline's line and the per-step
    overhead: a fixed time at each knot, a power of two of rows from 2 to ROW_OVERHEAD_LIMIT / 2,
    linear between them, 0 at one row (the step overhead is that step's) and from
    ROW_OVERHEAD_LIMIT rows on. Never negative: a step of few rows runs below the roofline's
    efficiency, not above it.

    Why: the products of a few rows run neither at a fixed fraction of the peak nor at a fixed
    cost more. On a 2-core AVX2 EPYC (one thread) the tiny model's steps of 1 to 4 rows take the
    compiled small-batch kernel, longer ones oneDNN's products (30-40 us a call however few its
    rows, for the tiny model's matrices); a fit without this term, one line through the one-row decodes
    and the 32- to 512-token prefills, priced a 10-token chunk after a 128-token cached prefix at
    3.7 ms where it took 5.0, and that is the step every request whose prompt the prefix cache
    holds makes (its last, uncached tokens)."""

    rows: tuple[int, ...] = ()  # the knots, ascending
    seconds: tuple[float, ...] = ()  # at each

    @classmethod
    def knots_for(cls, rows: np.ndarray) -> tuple[int, ...]:
        """The knots a profile's row counts can fit: those with a sample between their neighbours."""
        powers = [2**k for k in range(1, ROW_OVERHEAD_LIMIT.bit_length() - 1)]  # 2 .. limit / 2
        return tuple(p for p in powers if any(p // 2 < r < 2 * p for r in rows))

    def at(self, rows: int) -> float:
        """The row overhead of a step of `rows` rows (plain Python: the simulators ask every step)."""
        if not self.rows or rows <= 1 or rows >= ROW_OVERHEAD_LIMIT:
            return 0.0
        knots, values = self.rows, self.seconds
        right = bisect.bisect_left(knots, rows)
        if right < len(knots) and knots[right] == rows:
            return values[right]
        low, low_value = (knots[right - 1], values[right - 1]) if right else (1, 0.0)
        high, high_value = (knots[right], values[right]) if right < len(knots) else (ROW_OVERHEAD_LIMIT, 0.0)
        return low_value + (high_value - low_value) * (rows - low) / (high - low)

    def describe(self) -> str:
        return ", ".join(f"{rows}: +{seconds * 1e3:.2f}" for rows, seconds in zip(self.rows, self.seconds, strict=True))


def row_basis(knots: tuple[int, ...], rows: np.ndarray) -> np.ndarray:
    """(samples, knots): the weight of each knot's time in each sample's row overhead (linear
    interpolation: the two knots around a row count share it), by RowOverheads.at itself."""
    units = [RowOverheads(knots, tuple(float(k == j) for j in range(len(knots)))) for k in range(len(knots))]
    return np.array([[unit.at(int(count)) for unit in units] for count in rows]).reshape(len(rows), len(knots))


class ConstantLatency:
    """Every step takes `seconds`, whatever its shape."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"a step takes a positive time, got {seconds!r}")
        self.seconds = seconds

    def step_seconds(self, step: StepShape) -> float:
        return self.seconds


class FittedLatency:
    def __init__(
        self, config: ModelConfig, peak_flops: float, peak_bandwidth: float, flops_efficiency: float,
        bandwidth_efficiency: float, step_overhead: float, chunk_overhead: float,
        row_overheads: RowOverheads | None = None, error: FitError | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.peak_flops, self.peak_bandwidth = peak_flops, peak_bandwidth
        self.flops_efficiency, self.bandwidth_efficiency = flops_efficiency, bandwidth_efficiency
        self.step_overhead, self.chunk_overhead = step_overhead, chunk_overhead
        self.row_overheads = row_overheads or RowOverheads()
        self.error = error  # on the samples it was fitted to

    @classmethod
    def from_profile(
        cls, profile: str | Path | Profile, model: ModelConfig | str | Path | None = None
    ) -> FittedLatency:
        """Fitted to a profile (a profile.json path, or one loaded); with `model` (its config, or a
        model directory) PlanError unless the profile measured that model."""
        if not isinstance(profile, Profile):
            profile = Profile.load(profile)
        if model is not None:
            config = model if isinstance(model, ModelConfig) else ModelConfig.load(model)
            profile.check_model(config)
        return cls.fit(profile)

    @classmethod
    def fit(cls, profile: Profile) -> FittedLatency:
        if len(profile.samples) < 4:
            raise PlanError(f"a profile needs at least 4 samples to fit; this one has {len(profile.samples)}")
        costs = [step_cost(profile.model, sample.step) for sample in profile.samples]
        flops = np.array([cost.flops for cost in costs]) / profile.peak_flops  # seconds at full efficiency
        moved = np.array([cost.bytes for cost in costs]) / profile.peak_bandwidth
        chunks = np.array([len(sample.step.chunks) for sample in profile.samples], dtype=float)
        rows = np.array([sample.step.num_tokens for sample in profile.samples], dtype=float)
        measured = np.array([sample.seconds for sample in profile.samples])
        knots = RowOverheads.knots_for(rows)
        basis = row_basis(knots, rows)
        # The coarse search solves the knots all together or not at all (8 supports, not up to 256).
        coarse = _Overheads(chunks, basis, measured, every_support=False)
        e_flops, e_bw = _search(flops, moved, coarse, _EFFICIENCIES, _EFFICIENCIES)
        # A finer search within one step of the coarse grid either way, on every support.
        overheads = _Overheads(chunks, basis, measured)
        ratio = _EFFICIENCIES[1] / _EFFICIENCIES[0]
        fine = np.geomspace(1 / ratio, ratio, 21)
        e_flops, e_bw = _search(flops, moved, overheads, e_flops * fine, e_bw * fine)
        solution = overheads.solve(np.maximum(flops / e_flops, moved / e_bw)[None, :])[0][0]
        model = cls(
            profile.model, profile.peak_flops, profile.peak_bandwidth, e_flops, e_bw, float(solution[0]),
            float(solution[1]), RowOverheads(knots, tuple(float(value) for value in solution[2:])),
        )  # fmt: skip
        model.error = model.errors(profile.samples)
        return model

    def step_seconds(self, step: StepShape) -> float:
        chunks = step.chunks
        if not chunks:
            return 0.0
        tokens, keys, reads = chunk_totals(chunks, self.config.sliding_window)
        return (
            self.core_seconds(totals_cost(self.config, tokens=tokens, samples=step.num_samples, keys=keys, reads=reads))
            + self.step_overhead
            + self.chunk_overhead * len(chunks)
            + self.row_overheads.at(tokens)
        )

    def core_seconds(self, cost: StepCost) -> float:
        """The roofline: compute or memory, whichever takes longer."""
        return max(
            cost.flops / (self.flops_efficiency * self.peak_flops),
            cost.bytes / (self.bandwidth_efficiency * self.peak_bandwidth),
        )

    def errors(self, samples: list[Sample]) -> FitError:
        relative = [abs(self.step_seconds(sample.step) - sample.seconds) / sample.seconds for sample in samples]
        return FitError(float(np.median(relative)), float(np.max(relative)), len(relative))

    def describe(self) -> str:
        rows = f"; by rows (ms): {self.row_overheads.describe()}" if self.row_overheads.rows else ""
        return (
            f"{self.flops_efficiency:.3f} of {self.peak_flops / 1e9:,.1f} GFLOP/s, "
            f"{self.bandwidth_efficiency:.3f} of {self.peak_bandwidth / 1e9:,.1f} GB/s, "
            f"+{self.step_overhead * 1e3:.3f} ms a step, +{self.chunk_overhead * 1e6:.1f} us a request{rows}"
        )


def _search(
    flops: np.ndarray, moved: np.ndarray, overheads: _Overheads, flops_grid: np.ndarray, bw_grid: np.ndarray
) -> tuple[float, float]:
    """The (e_flops, e_bw) pair whose roofline, with its best overheads, has the least squared
    relative error."""
    best, pair = np.inf, (float(flops_grid[0]), float(bw_grid[0]))
    for e_flops in flops_grid:
        core = np.maximum(flops[None, :] / e_flops, moved[None, :] / bw_grid[:, None])  # (bw, samples)
        losses = overheads.solve(core)[1]
        index = int(np.argmin(losses))
        if losses[index] < best:
            best, pair = float(losses[index]), (float(e_flops), float(bw_grid[index]))
    return pair


class _Overheads:
    """The overheads that best explain what a roofline leaves of each sample's time, per step,
    per chunk and per row knot (RowOverheads), none negative, by least squares on the relative
    error. Non-negative least squares by its supports: the unconstrained solution on each subset
    of the columns, the best one without a negative value (the optimum is one of them); a
    profile has at most 2 + 6 columns, 256 subsets, and every roofline the search tries is
    solved on each at once. Without `every_support`, only the subsets that take the knots all
    together or none of them (8): a cheaper approximation, for the coarse search."""

    def __init__(self, chunks: np.ndarray, basis: np.ndarray, measured: np.ndarray, every_support: bool = True) -> None:
        self.weight = 1 / measured
        self.measured = measured
        self.columns = np.column_stack([np.ones_like(measured), chunks, basis]) * self.weight[:, None]
        count = self.columns.shape[1]
        knot_bits = (2**count - 1) ^ 0b11  # the columns after the step's and the chunk's
        subsets = [s for s in range(2**count) if every_support or (s & knot_bits) in (0, knot_bits)]
        # Each support's least-squares solver, zero in the rows of the columns it leaves out:
        # (supports, columns, samples); the first, the empty support, all zero.
        self.solvers = np.zeros((len(subsets), count, len(measured)))
        for index, subset in enumerate(subsets):
            kept = [c for c in range(count) if subset >> c & 1]
            if kept:
                self.solvers[index, kept] = np.linalg.pinv(self.columns[:, kept])

    def solve(self, core: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """core: (rooflines, samples) seconds; each roofline's overheads (rooflines, columns) and loss."""
        residual = (self.measured[None, :] - core) * self.weight[None, :]  # (rooflines, samples)
        values = np.tensordot(residual, self.solvers, axes=([1], [2]))  # (rooflines, supports, columns)
        misfit = residual[:, None, :] - values @ self.columns.T
        loss = np.where(np.all(values >= 0, axis=2), np.sum(misfit**2, axis=2), np.inf)
        best = np.argmin(loss, axis=1)  # the empty support (0) is always allowed
        rows = np.arange(core.shape[0])
        return values[rows, best], loss[rows, best]


class DatasheetLatency:
    """A GPU's step time from its datasheet: the roofline at the catalog's efficiency
    assumptions, its per-step and per-chunk overheads, and under tensor parallelism each GPU's
    share of the work plus two all-reduces per layer over NVLink."""

    def __init__(
        self, gpu: GPU | str, model_config: ModelConfig, tp: int = 1, efficiency: Assumptions | None = None,
        precision: str = "bf16", kv_precision: str | None = None, catalog: Catalog | None = None,
    ) -> None:  # fmt: skip
        if catalog is None and (isinstance(gpu, str) or efficiency is None):
            catalog = Catalog.load()
        self.gpu = catalog.gpu(gpu) if isinstance(gpu, str) else gpu
        self.config = model_config
        self.assumptions = efficiency if efficiency is not None else catalog.assumptions
        if tp < 1 or tp > self.gpu.nvlink_domain:
            raise PlanError(
                f"tensor parallelism on {self.gpu.name} is 1 to {self.gpu.nvlink_domain} GPUs (its NVLink domain), got {tp}"
            )
        if model_config.num_attention_heads % tp:
            raise PlanError(f"tp={tp} does not divide the model's {model_config.num_attention_heads} attention heads")
        self.tp = tp
        self.precision = precision
        self.peak_flops = self.gpu.peak_flops(precision)
        self.weight_bytes = dtype_bytes(precision)
        self.kv_bytes = dtype_bytes(kv_precision or ("fp8" if precision == "fp4" else precision))

    def step_seconds(self, step: StepShape) -> float:
        if not step.chunks:
            return 0.0
        a = self.assumptions
        cost = step_cost(self.config, step, self.weight_bytes, self.kv_bytes, self.tp)
        core = max(
            cost.flops / (a.flops_efficiency * self.peak_flops),
            cost.bytes / (a.bandwidth_efficiency * self.gpu.hbm_bytes_per_second),
        )
        communication = tensor_parallel_seconds(
            step.num_tokens, self.config.hidden_size, self.config.num_hidden_layers, dtype_bytes("bf16"), self.tp,
            self.gpu.nvlink_bytes_per_second, a.allreduce_latency_seconds,
        )  # fmt: skip
        return core + communication + a.step_overhead_seconds + a.chunk_overhead_seconds * len(step.chunks)

    def kv_cache_bytes(self, memory_fraction: float = 0.9) -> float:
        """HBM left on each GPU for the KV cache once its share of the weights is in (negative:
        the weights do not fit)."""
        c = self.config
        weights = linear_parameters(c) + c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
        return self.gpu.hbm_bytes * memory_fraction - weights * self.weight_bytes / self.tp
