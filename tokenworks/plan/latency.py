"""Step-latency models (`StepLatency`): how long an engine step of a given shape takes.

All three price a step from its shape alone, and none imports torch:

- `FittedLatency`: this machine, from a profile. A roofline core plus what a step costs besides
  its FLOPs and bytes:
      seconds = core + step overhead + chunk overhead x chunks + prefill overhead x (any prefill)
  The core takes one of two forms, whichever fits the profile's samples better (least squares on
  relative error), with the peaks measured by the profile and the efficiencies fitted:
      overlapped: max(FLOPs / (e_flops x peak FLOP/s), bytes / (e_bw x bandwidth))
      additive:   linear FLOPs / (e_flops x peak) + attention FLOPs / (e_attention x peak)
                  + bytes / (e_bw x bandwidth)
  A GPU overlaps its memory traffic with its arithmetic; one CPU thread mostly does not, and its
  attention loops reach a smaller share of the matmul peak than its projections. The additive
  form is linear in its unknowns, so it affords the attention its own efficiency. The prefill
  overhead is the engine's prefill path (the prompt's attention beside the decode kernel): a step
  with prefill chunks pays it once, however many it has (tiny, timed alone: a decode 1.1 ms, one
  prefill chunk of 8 tokens 1.90 ms, eight of them 6.60 ms; docs/benchmarks.md, Plan).
- `DatasheetLatency`: a GPU without a profile, from the catalog's datasheet figures and stated
  efficiency assumptions, plus tensor parallelism's all-reduces.
- `ConstantLatency`: every step the same time, for queueing tests with known answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.hardware import GPU, Assumptions, Catalog, tensor_parallel_seconds
from tokenworks.plan.profiles import Profile, Sample
from tokenworks.plan.roofline import StepCost, dtype_bytes, linear_parameters, step_cost
from tokenworks.plan.step import StepShape

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
        bandwidth_efficiency: float, step_overhead: float, chunk_overhead: float, prefill_overhead: float = 0.0,
        attention_efficiency: float | None = None, error: FitError | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.peak_flops, self.peak_bandwidth = peak_flops, peak_bandwidth
        self.flops_efficiency, self.bandwidth_efficiency = flops_efficiency, bandwidth_efficiency
        # None: the overlapped core (attention at flops_efficiency); a number: the additive core.
        self.attention_efficiency = attention_efficiency
        self.step_overhead, self.chunk_overhead, self.prefill_overhead = step_overhead, chunk_overhead, prefill_overhead
        self.error = error  # on the samples it was fitted to

    @property
    def additive(self) -> bool:
        return self.attention_efficiency is not None

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
        """Both core forms fitted to the profile's samples; the one with the smaller squared
        relative error kept."""
        if len(profile.samples) < 4:
            raise PlanError(f"a profile needs at least 4 samples to fit; this one has {len(profile.samples)}")
        samples = _FitSamples.of(profile)
        overlapped, overlapped_loss = cls._fit_overlapped(profile, samples)
        additive, additive_loss = cls._fit_additive(profile, samples)
        model = additive if additive_loss < overlapped_loss else overlapped
        model.error = model.errors(profile.samples)
        return model

    @classmethod
    def _fit_overlapped(cls, profile: Profile, s: _FitSamples) -> tuple[FittedLatency, float]:
        """A grid search over the two efficiencies (the max() is not linear), each pair with its
        best overheads."""
        flops = (s.linear + s.attention) / profile.peak_flops  # seconds at full efficiency
        moved = s.moved / profile.peak_bandwidth
        e_flops, e_bw = _search(flops, moved, s.overheads, s.measured, _EFFICIENCIES, _EFFICIENCIES)
        # A finer search within one step of the coarse grid either way.
        ratio = _EFFICIENCIES[1] / _EFFICIENCIES[0]
        fine = np.geomspace(1 / ratio, ratio, 21)
        e_flops, e_bw = _search(flops, moved, s.overheads, s.measured, e_flops * fine, e_bw * fine)
        (step, chunk, prefill), loss = _overheads(np.maximum(flops / e_flops, moved / e_bw), s.overheads, s.measured)
        model = cls(profile.model, profile.peak_flops, profile.peak_bandwidth, e_flops, e_bw, step, chunk, prefill)
        return model, loss

    @classmethod
    def _fit_additive(cls, profile: Profile, s: _FitSamples) -> tuple[FittedLatency, float]:
        """Non-negative least squares on relative error: every unknown enters linearly (the
        inverse efficiencies and the overheads)."""
        times = np.column_stack(
            [s.linear / profile.peak_flops, s.attention / profile.peak_flops, s.moved / profile.peak_bandwidth]
        )
        columns = np.column_stack([times, s.overheads]) / s.measured[:, None]
        solutions, losses = NonNegativeLeastSquares(columns).solve(np.ones_like(s.measured))
        solution, loss = solutions[0], float(losses[0])
        e_linear, e_attention, e_bw = (1 / x if x > 0 else math.inf for x in solution[:3])
        step, chunk, prefill = (float(x) for x in solution[3:])
        model = cls(
            profile.model, profile.peak_flops, profile.peak_bandwidth, e_linear, e_bw, step, chunk, prefill,
            attention_efficiency=e_attention,
        )  # fmt: skip
        return model, loss

    def step_seconds(self, step: StepShape) -> float:
        if not step.chunks:
            return 0.0
        return self.core_seconds(step_cost(self.config, step)) + self.overhead_seconds(step)

    def core_seconds(self, cost: StepCost) -> float:
        """The roofline: compute or memory, whichever takes longer; or, additive, both."""
        moving = cost.bytes / (self.bandwidth_efficiency * self.peak_bandwidth)
        if self.attention_efficiency is None:
            return max(cost.flops / (self.flops_efficiency * self.peak_flops), moving)
        projections = (cost.linear_flops + cost.lm_head_flops) / (self.flops_efficiency * self.peak_flops)
        return projections + cost.attention_flops / (self.attention_efficiency * self.peak_flops) + moving

    def overhead_seconds(self, step: StepShape) -> float:
        prefill = self.prefill_overhead if step.prefills else 0.0
        return self.step_overhead + self.chunk_overhead * len(step.chunks) + prefill

    def errors(self, samples: list[Sample]) -> FitError:
        relative = [abs(self.step_seconds(sample.step) - sample.seconds) / sample.seconds for sample in samples]
        return FitError(float(np.median(relative)), float(np.max(relative)), len(relative))

    def describe(self) -> str:
        if self.attention_efficiency is None:
            core = (
                f"max({self.flops_efficiency:.3f} of {self.peak_flops / 1e9:,.1f} GFLOP/s, "
                f"{self.bandwidth_efficiency:.3f} of {self.peak_bandwidth / 1e9:,.1f} GB/s)"
            )
        else:
            core = (
                f"{self.flops_efficiency:.3f} (attention {self.attention_efficiency:.3f}) of "
                f"{self.peak_flops / 1e9:,.1f} GFLOP/s + {self.bandwidth_efficiency:.3f} of "
                f"{self.peak_bandwidth / 1e9:,.1f} GB/s"
            )
        return (
            f"{core}, +{self.step_overhead * 1e3:.3f} ms a step, +{self.chunk_overhead * 1e6:.1f} us a request, "
            f"+{self.prefill_overhead * 1e3:.3f} ms a step with prefills"
        )


@dataclass(frozen=True, slots=True)
class _FitSamples:
    """A profile's samples as the arrays the fits need."""

    linear: np.ndarray  # FLOPs of the projections and the LM head
    attention: np.ndarray  # FLOPs of attention
    moved: np.ndarray  # bytes
    overheads: np.ndarray  # (samples, 3): 1, chunks, 1 if the step has a prefill chunk
    measured: np.ndarray  # seconds

    @classmethod
    def of(cls, profile: Profile) -> _FitSamples:
        costs = [step_cost(profile.model, sample.step) for sample in profile.samples]
        overheads = [(1.0, len(s.step.chunks), 1.0 if s.step.prefills else 0.0) for s in profile.samples]
        return cls(
            np.array([cost.linear_flops + cost.lm_head_flops for cost in costs]),
            np.array([cost.attention_flops for cost in costs]), np.array([cost.bytes for cost in costs]),
            np.array(overheads), np.array([sample.seconds for sample in profile.samples]),
        )  # fmt: skip


def _search(
    flops: np.ndarray, moved: np.ndarray, overheads: np.ndarray, measured: np.ndarray,
    flops_grid: np.ndarray, bw_grid: np.ndarray,
) -> tuple[float, float]:  # fmt: skip
    """The (e_flops, e_bw) pair whose roofline, with its best overheads, has the least squared
    relative error."""
    solver = NonNegativeLeastSquares(overheads / measured[:, None])
    best, pair = np.inf, (float(flops_grid[0]), float(bw_grid[0]))
    for e_flops in flops_grid:
        core = np.maximum(flops[None, :] / e_flops, moved[None, :] / bw_grid[:, None])  # (bw, samples)
        losses = solver.solve(1 - core / measured)[1]
        index = int(np.argmin(losses))
        if losses[index] < best:
            best, pair = float(losses[index]), (float(e_flops), float(bw_grid[index]))
    return pair


def _overheads(core: np.ndarray, overheads: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative overheads x minimising sum(((core + overheads @ x - t) / t)^2), and that sum."""
    solutions, losses = NonNegativeLeastSquares(overheads / measured[:, None]).solve(1 - core / measured)
    return solutions[0], float(losses[0])


class NonNegativeLeastSquares:
    """x >= 0 minimising |columns @ x - target|^2, for many targets at once. Exact: the least
    squares solution on every subset of the columns (the others at zero), the best non-negative
    one; cheap for the few columns these fits have (2^k - 1 subsets, each solved once for every
    target by its pseudo-inverse)."""

    def __init__(self, columns: np.ndarray) -> None:
        self.width = columns.shape[1]
        # Solved on columns of unit length (seconds and counts differ by orders of magnitude,
        # and pinv's cut-off is relative), the solutions scaled back.
        norms = np.linalg.norm(columns, axis=0)
        norms[norms == 0] = 1.0
        self.subsets = []
        for mask in range(1, 2**self.width):
            chosen = [column for column in range(self.width) if mask >> column & 1]
            inverse = np.linalg.pinv(columns[:, chosen] / norms[chosen]) / norms[chosen, None]
            self.subsets.append((chosen, columns[:, chosen], inverse))

    def solve(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(solutions, losses) for a target or a (targets, rows) array of them."""
        targets = np.atleast_2d(targets)
        best = np.zeros((len(targets), self.width))
        losses = np.einsum("ij,ij->i", targets, targets)  # every x at zero
        for chosen, columns, inverse in self.subsets:
            solutions = targets @ inverse.T  # (targets, chosen)
            residuals = targets - solutions @ columns.T
            subset_losses = np.einsum("ij,ij->i", residuals, residuals)
            better = (solutions >= 0).all(axis=1) & (subset_losses < losses)
            losses = np.where(better, subset_losses, losses)
            best[np.ix_(better, chosen)] = solutions[better]
        return best, losses


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
