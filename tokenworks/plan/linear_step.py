"""A step-latency model as a few numbers: the step's time from its totals, not its chunks.

The fast mode (fast.py) never builds a `StepShape`: it keeps a batch as totals (tokens, rows
that sample, keys attended, cached tokens read, chunks) and advances hundreds of decode steps at
once. That works because every model of latency.py is linear in those totals inside a roofline:

    seconds = max(flops / F, bytes / B) + fixed + per_chunk x chunks + per_token x tokens
              + row overhead(tokens)
    flops   = flops_per_token x tokens + flops_per_key x keys + flops_per_sample x samples
    bytes   = weights (+ the LM head's, when a row samples) + bytes_per_token x tokens
              + bytes_per_read x reads

`LinearStep.of(latency)` reads the coefficients off roofline.step_cost on one-token shapes (so
the arithmetic lives in one place), and tests check it answers as `latency.step_seconds` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.hardware import tensor_parallel_seconds
from tokenworks.plan.latency import ConstantLatency, DatasheetLatency, FittedLatency, RowOverheads
from tokenworks.plan.roofline import chunk_totals, dtype_bytes, step_cost
from tokenworks.plan.step import StepLatency, StepShape


@dataclass(frozen=True, slots=True)
class StepTotals:
    """A step's chunks summed: what its time depends on."""

    tokens: int
    samples: int
    keys: int  # sum over chunks of the keys its queries attend (roofline.attended_keys)
    reads: int  # sum over chunks of new + cached tokens whose K and V are read
    chunks: int

    @classmethod
    def of(cls, step: StepShape, window: int | None = None) -> StepTotals:
        tokens, keys, reads = chunk_totals(step.chunks, window)
        return cls(tokens, step.num_samples, keys, reads, len(step.chunks))


@dataclass(frozen=True, slots=True)
class LinearStep:
    flops_per_second: float  # achieved: efficiency x peak (inf: compute never limits)
    bytes_per_second: float
    flops_per_token: float
    flops_per_key: float
    flops_per_sample: float
    weight_bytes: float  # every step reads the layers' weights
    head_bytes: float  # and the LM head's when some row samples
    bytes_per_token: float  # the embedding row and the K and V written
    bytes_per_read: float  # K and V of one cached or new token, every layer
    fixed_seconds: float  # per step: overheads, and tensor parallelism's all-reduce latencies
    chunk_seconds: float  # per scheduled request
    token_seconds: float  # per token: tensor parallelism's all-reduce volume
    window: int | None = None  # the model's sliding window (keys and reads are clamped to it)
    row_overheads: RowOverheads = field(default_factory=RowOverheads)  # a fitted model's, by the step's tokens

    @classmethod
    def of(cls, latency: StepLatency) -> LinearStep:
        if isinstance(latency, ConstantLatency):
            return cls(math.inf, math.inf, 0, 0, 0, 0, 0, 0, 0, latency.seconds, 0, 0)
        if isinstance(latency, FittedLatency):
            linear = cls._roofline(
                latency.config, latency.flops_efficiency * latency.peak_flops,
                latency.bandwidth_efficiency * latency.peak_bandwidth, latency.step_overhead,
                latency.chunk_overhead, {},
            )  # fmt: skip
            return replace(linear, row_overheads=latency.row_overheads)
        if isinstance(latency, DatasheetLatency):
            a, config = latency.assumptions, latency.config
            sizes = {"weight_bytes": latency.weight_bytes, "kv_bytes": latency.kv_bytes, "tp": latency.tp}

            def communication(tokens: int) -> float:
                return tensor_parallel_seconds(
                    tokens, config.hidden_size, config.num_hidden_layers, dtype_bytes("bf16"), latency.tp,
                    latency.gpu.nvlink_bytes_per_second, a.allreduce_latency_seconds,
                )  # fmt: skip

            linear = cls._roofline(
                config, a.flops_efficiency * latency.peak_flops,
                a.bandwidth_efficiency * latency.gpu.hbm_bytes_per_second,
                a.step_overhead_seconds + communication(0), a.chunk_overhead_seconds, sizes,
            )  # fmt: skip
            return replace(linear, token_seconds=communication(1) - communication(0))
        raise PlanError(f"the fast mode prices steps with the fitted, datasheet or constant model, not {latency!r}")

    @classmethod
    def _roofline(
        cls, config: ModelConfig, flops_per_second: float, bytes_per_second: float, fixed: float, per_chunk: float,
        sizes: dict,
    ) -> LinearStep:  # fmt: skip
        def cost(chunks: tuple[tuple[int, int], ...], samples: int):
            return step_cost(config, StepShape(chunks, samples), **sizes)

        one, later, two, sampled = cost(((1, 0),), 0), cost(((1, 1),), 0), cost(((2, 0),), 0), cost(((1, 0),), 1)
        row = two.weight_bytes - one.weight_bytes  # the embedding row each token reads
        return cls(
            flops_per_second=flops_per_second, bytes_per_second=bytes_per_second,
            flops_per_token=one.linear_flops, flops_per_key=later.attention_flops - one.attention_flops,
            flops_per_sample=sampled.lm_head_flops, weight_bytes=one.weight_bytes - row,
            head_bytes=sampled.weight_bytes - one.weight_bytes, bytes_per_token=row + one.kv_write_bytes,
            bytes_per_read=later.kv_read_bytes - one.kv_read_bytes, fixed_seconds=fixed, chunk_seconds=per_chunk,
            token_seconds=0.0, window=config.sliding_window,
        )  # fmt: skip

    def seconds(self, tokens: int, samples: int, keys: float, reads: float, chunks: int) -> float:
        """One step's time from its totals (0 for an empty step, as the models answer)."""
        if not chunks:
            return 0.0
        flops = self.flops_per_token * tokens + self.flops_per_key * keys + self.flops_per_sample * samples
        moved = self.weight_bytes + (self.head_bytes if samples else 0.0)
        moved += self.bytes_per_token * tokens + self.bytes_per_read * reads
        return max(flops / self.flops_per_second, moved / self.bytes_per_second) + self.overhead(tokens, chunks)

    def overhead(self, tokens: int, chunks: int) -> float:
        return (
            self.fixed_seconds + self.chunk_seconds * chunks + self.token_seconds * tokens
            + self.row_overheads.at(tokens)
        )  # fmt: skip

    def of_totals(self, totals: StepTotals) -> float:
        return self.seconds(totals.tokens, totals.samples, totals.keys, totals.reads, totals.chunks)

    def decode_run(self, batch: int, keys: float) -> tuple[float, float, float, float, float]:
        """`batch` requests decoding together, `keys` attended in the first step, each step one more
        per request: step j takes max(c + cj x j, m + mj x j) + overhead; (c, cj, m, mj, overhead)."""
        flops = (self.flops_per_token + self.flops_per_sample) * batch + self.flops_per_key * keys
        moved = self.weight_bytes + self.head_bytes + self.bytes_per_token * batch + self.bytes_per_read * keys
        return (
            flops / self.flops_per_second, self.flops_per_key * batch / self.flops_per_second,
            moved / self.bytes_per_second, self.bytes_per_read * batch / self.bytes_per_second,
            self.overhead(batch, batch),
        )  # fmt: skip
