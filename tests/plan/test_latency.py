"""The fitted step-latency model: its fixed cost by row count, by hand, and a fit that finds a
known model again from samples it priced."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tokenworks.model import preset_config
from tokenworks.plan.latency import FittedLatency, RowOverheads
from tokenworks.plan.linear_step import LinearStep, StepTotals
from tokenworks.plan.profiles import Profile, Sample, config_hash
from tokenworks.plan.step import StepShape


def test_row_overheads_by_hand() -> None:
    rows = RowOverheads((2, 8, 32), (1e-4, 2e-3, 1e-3))
    assert rows.at(1) == 0.0  # the step overhead is a one-row step's
    assert rows.at(2) == pytest.approx(1e-4)
    assert rows.at(5) == pytest.approx(1e-4 + (2e-3 - 1e-4) * 3 / 6)
    assert rows.at(20) == pytest.approx(2e-3 + (1e-3 - 2e-3) * 12 / 24)
    assert rows.at(80) == pytest.approx(1e-3 * (128 - 80) / 96)  # down to 0 at 128 rows
    assert rows.at(128) == 0.0 and rows.at(4096) == 0.0
    assert RowOverheads().at(10) == 0.0
    # a knot where a sample lies between its neighbours: 2 (a 2-row step), 8, 32; not 4, 16, 64
    assert RowOverheads.knots_for(np.array([1, 2, 8, 32, 130, 512])) == (2, 8, 32)


def _profile_priced_by(truth: FittedLatency) -> Profile:
    """The full profile grid's shapes, each taking the time `truth` gives it."""
    shapes = [((tokens, cached),) for cached in (0, 256, 1024) for tokens in (8, 16, 32, 128, 512)]
    for context in (64, 256, 1024):
        for batch in (32, 16, 8, 4, 2, 1):
            shapes.append(((1, context),) * batch)
    shapes += [((1, 64),) * 4 + ((128, 0),), ((1, 64),) * 16 + ((512, 0),)]
    samples = [Sample(f"shape {i}", StepShape(s, len(s)), truth.step_seconds(StepShape(s, len(s))))
               for i, s in enumerate(shapes)]  # fmt: skip
    config = truth.config
    return Profile(
        machine={"cpu": "test"}, model=config, model_hash=config_hash(config), engine={},
        matmul_flops={"float32": truth.peak_flops}, peak_flops=truth.peak_flops, bandwidth={"read": truth.peak_bandwidth},
        peak_bandwidth=truth.peak_bandwidth, samples=samples,
    )  # fmt: skip


def test_the_fit_finds_a_known_model_and_its_row_overheads_again() -> None:
    truth = FittedLatency(
        preset_config("small", 8192), 1e11, 2e10, 0.5, 0.8, 1e-3, 2e-5,
        RowOverheads((2, 4, 8, 16, 32), (1e-4, 4e-4, 2e-3, 2.5e-3, 1.5e-3)),
    )  # fmt: skip
    fitted = FittedLatency.fit(_profile_priced_by(truth))
    assert fitted.error.median < 0.005
    assert fitted.flops_efficiency == pytest.approx(0.5, rel=0.02)
    assert fitted.row_overheads.rows == (2, 4, 8, 16, 32)
    assert fitted.row_overheads.seconds == pytest.approx(truth.row_overheads.seconds, abs=2e-4)
    # the step a prefix-cached prompt makes: 10 tokens after 128 cached, between two knots
    cached = StepShape(((10, 128),), 1)
    assert fitted.step_seconds(cached) == pytest.approx(truth.step_seconds(cached), rel=0.02)
    # and the fast mode's totals price it the same way
    assert LinearStep.of(fitted).of_totals(StepTotals.of(cached)) == pytest.approx(fitted.step_seconds(cached))


def test_row_overheads_are_never_negative() -> None:
    """Steps of 2 to 32 rows half a millisecond cheaper than the line: the knots stay at zero
    rather than go below it (a step of few rows is never faster than the roofline says)."""
    truth = FittedLatency(preset_config("small", 8192), 1e11, 2e10, 0.5, 0.8, 1e-3, 2e-5)
    profile = _profile_priced_by(truth)
    profile.samples = [replace(s, seconds=s.seconds - 5e-4) if 2 <= s.step.num_tokens <= 32 else s
                       for s in profile.samples]  # fmt: skip
    fitted = FittedLatency.fit(profile)
    # (unconstrained, the knots would take the half millisecond back: -0.5 ms each)
    assert fitted.row_overheads.seconds[:3] == (0.0, 0.0, 0.0) and min(fitted.row_overheads.seconds) >= 0.0
