"""Step-latency models (`StepLatency`): how long an engine step of a given shape takes.

All three price a step from its shape alone, and none imports torch:

- `FittedLatency`: this machine, from a profile. A roofline core, the larger of compute time and
  memory time, plus what a step costs besides its FLOPs and bytes:
      seconds = max(FLOPs / (e_flops x peak FLOP/s), bytes / (e_bw x bandwidth))
                + step overhead + chunk overhead x chunks
  with the peaks measured by the profile and e_flops, e_bw and the two overheads fitted to its
  samples (least squares on relative error).
- `DatasheetLatency`: a GPU without a profile, from the catalog's datasheet figures and stated
  efficiency assumptions, plus tensor parallelism's all-reduces.
- `ConstantLatency`: every step the same time, for queueing tests with known answers.
"""

from __future__ import annotations

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
        bandwidth_efficiency: float, step_overhead: float, chunk_overhead: float, error: FitError | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.peak_flops, self.peak_bandwidth = peak_flops, peak_bandwidth
        self.flops_efficiency, self.bandwidth_efficiency = flops_efficiency, bandwidth_efficiency
        self.step_overhead, self.chunk_overhead = step_overhead, chunk_overhead
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
        measured = np.array([sample.seconds for sample in profile.samples])
        e_flops, e_bw = _search(flops, moved, chunks, measured, _EFFICIENCIES, _EFFICIENCIES)
        # A finer search within one step of the coarse grid either way.
        ratio = _EFFICIENCIES[1] / _EFFICIENCIES[0]
        fine = np.geomspace(1 / ratio, ratio, 21)
        e_flops, e_bw = _search(flops, moved, chunks, measured, e_flops * fine, e_bw * fine)
        step_overhead, chunk_overhead = _overheads(np.maximum(flops / e_flops, moved / e_bw), chunks, measured)[:2]
        model = cls(
            profile.model, profile.peak_flops, profile.peak_bandwidth, e_flops, e_bw, step_overhead, chunk_overhead
        )
        model.error = model.errors(profile.samples)
        return model

    def step_seconds(self, step: StepShape) -> float:
        if not step.chunks:
            return 0.0
        return (
            self.core_seconds(step_cost(self.config, step))
            + self.step_overhead
            + self.chunk_overhead * len(step.chunks)
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
        return (
            f"{self.flops_efficiency:.3f} of {self.peak_flops / 1e9:,.1f} GFLOP/s, "
            f"{self.bandwidth_efficiency:.3f} of {self.peak_bandwidth / 1e9:,.1f} GB/s, "
            f"+{self.step_overhead * 1e3:.3f} ms a step, +{self.chunk_overhead * 1e6:.1f} us a request"
        )


def _search(
    flops: np.ndarray, moved: np.ndarray, chunks: np.ndarray, measured: np.ndarray,
    flops_grid: np.ndarray, bw_grid: np.ndarray,
) -> tuple[float, float]:  # fmt: skip
    """The (e_flops, e_bw) pair whose roofline, with its best overheads, has the least squared
    relative error."""
    best, pair = np.inf, (float(flops_grid[0]), float(bw_grid[0]))
    for e_flops in flops_grid:
        core = np.maximum(flops[None, :] / e_flops, moved[None, :] / bw_grid[:, None])  # (bw, samples)
        for index, row in enumerate(core):
            loss = _overheads(row, chunks, measured)[2]
            if loss < best:
                best, pair = loss, (float(e_flops), float(bw_grid[index]))
    return pair


def _overheads(core: np.ndarray, chunks: np.ndarray, measured: np.ndarray) -> tuple[float, float, float]:
    """Non-negative (per step, per chunk) overheads minimising sum(((core + a + b k - t) / t)^2),
    and that sum: the unconstrained least squares, else the best with one or both at zero."""
    weight = 1 / measured
    residual = (measured - core) * weight  # what the overheads must explain, relative
    columns = np.stack([weight, chunks * weight], axis=1)
    candidates = []
    solution = np.linalg.lstsq(columns, residual, rcond=None)[0]
    if (solution >= 0).all():
        candidates.append((float(solution[0]), float(solution[1])))
    for column in (0, 1):
        x = columns[:, column]
        value = max(0.0, float(x @ residual / (x @ x)))
        candidates.append((value, 0.0) if column == 0 else (0.0, value))
    best = None
    for a, b in candidates:
        loss = float(np.sum((residual - a * weight - b * chunks * weight) ** 2))
        if best is None or loss < best[2]:
            best = (a, b, loss)
    return best


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
