"""The fitted step-latency model: its fit finds the form and the figures a profile was made with."""

from __future__ import annotations

import numpy as np
import pytest

from tokenworks.model.config import ModelConfig
from tokenworks.plan.latency import FittedLatency, NonNegativeLeastSquares
from tokenworks.plan.profiles import Profile, Sample, config_hash
from tokenworks.plan.step import StepShape

CONFIG = ModelConfig(
    vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, dtype="float32",
)  # fmt: skip
PEAK_FLOPS, PEAK_BANDWIDTH = 2e11, 2e10
# The grid `plan profile` measures, in small: prefills (short ones too) after 0 and 256 cached
# tokens, decode batches at two contexts, and a prefill beside a decode batch.
SHAPES = [
    *(((tokens, cached),) for tokens in (8, 16, 32, 128, 512) for cached in (0, 256)),
    *(((1, context),) * batch for batch in (1, 2, 4, 8, 32) for context in (64, 1024)),
    ((1, 128),) * 4 + ((16, 0),),
    ((1, 512),) * 16 + ((128, 256),),
]


def profile_of(latency: FittedLatency) -> Profile:
    samples = [
        Sample(f"shape {i}", StepShape(shape, len(shape)), latency.step_seconds(StepShape(shape, len(shape))))
        for i, shape in enumerate(SHAPES)
    ]
    return Profile(
        machine={"cpu": "test", "cores": 2, "threads": 1}, model=CONFIG, model_hash=config_hash(CONFIG),
        engine={"block_size": 16, "max_num_batched_tokens": 2048, "max_num_seqs": 256},
        matmul_flops={"float32": PEAK_FLOPS}, peak_flops=PEAK_FLOPS, bandwidth={"read": PEAK_BANDWIDTH},
        peak_bandwidth=PEAK_BANDWIDTH, samples=samples, created="test",
    )  # fmt: skip


def test_an_additive_machine_is_fitted_additive_with_its_own_figures() -> None:
    truth = FittedLatency(
        CONFIG, PEAK_FLOPS, PEAK_BANDWIDTH, 0.8, 1.5, 2e-4, 4e-5, prefill_overhead=3.4e-4, attention_efficiency=0.5
    )
    fitted = FittedLatency.fit(profile_of(truth))
    assert fitted.additive
    for name in ("flops_efficiency", "attention_efficiency", "bandwidth_efficiency", "step_overhead",
                 "chunk_overhead", "prefill_overhead"):  # fmt: skip
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    assert fitted.error.max < 1e-9 and fitted.error.samples == len(SHAPES)


def test_an_overlapped_machine_is_fitted_overlapped() -> None:
    """The overlapped core's efficiencies are searched on a grid, so they come back to within its
    step, and the steps to within a percent."""
    truth = FittedLatency(CONFIG, PEAK_FLOPS, PEAK_BANDWIDTH, 0.3, 0.7, 1e-3, 5e-5, prefill_overhead=5e-4)
    fitted = FittedLatency.fit(profile_of(truth))
    assert not fitted.additive
    assert fitted.flops_efficiency == pytest.approx(0.3, rel=0.02)
    assert fitted.bandwidth_efficiency == pytest.approx(0.7, rel=0.02)
    assert fitted.prefill_overhead == pytest.approx(5e-4, rel=0.1)
    assert fitted.error.max < 0.01


def test_a_profile_without_a_prefill_overhead_is_fitted_without_one() -> None:
    truth = FittedLatency(CONFIG, PEAK_FLOPS, PEAK_BANDWIDTH, 0.8, 1.5, 2e-4, 4e-5, attention_efficiency=0.5)
    fitted = FittedLatency.fit(profile_of(truth))
    assert fitted.prefill_overhead == pytest.approx(0.0, abs=1e-12)
    assert "+0.000 ms a step with prefills" in fitted.describe()


def test_nonnegative_least_squares_by_hand() -> None:
    """min (x1 + 1)^2 + (x2 - 2)^2 + (x1 + x2 - 1)^2: unconstrained at (-1, 2); with x >= 0 at x1 = 0,
    where (x2 - 2)^2 + (x2 - 1)^2 is least at x2 = 1.5 (1 + 0.25 + 0.25)."""
    columns = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    solver = NonNegativeLeastSquares(columns)
    solutions, losses = solver.solve(np.array([-1.0, 2.0, 1.0]))
    assert solutions[0].tolist() == pytest.approx([0.0, 1.5], abs=1e-12) and losses[0] == pytest.approx(1.5)
    # many targets at once, each its own answer; one that is feasible unconstrained: exact
    solutions, losses = solver.solve(np.array([[-1.0, 2.0, 1.0], [1.0, 2.0, 3.0]]))
    assert solutions[1].tolist() == pytest.approx([1.0, 2.0], abs=1e-12) and losses[1] == pytest.approx(0.0, abs=1e-20)
