"""The fast mode against the exact mode on the same sweep: the error per point and metric.

Both modes get the same workload (the exact mode's prompt ids; their lengths and estimated
prefix hits for the fast one), the same load levels (closed loop or the bench's seeded open-loop
schedule), the same step-latency model and engine settings. The exact mode is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.metrics import summarize
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.plan.fast_cli import simulate_fast
from tokenworks.plan.prompts import SimPrompts
from tokenworks.plan.simulate import Fleet, simulate_levels

METRICS = ("ttft_p50", "tpot_p50", "output_throughput")


@dataclass(frozen=True, slots=True)
class Agreement:
    point: str
    metric: str
    exact: float
    fast: float

    @property
    def error(self) -> float:
        """(fast - exact) / exact."""
        return (self.fast - self.exact) / self.exact


def compare(
    fleet: Fleet, prompts: SimPrompts, workload: WorkloadOptions, base: LoadOptions,
    points: list[tuple[int | None, float | None]], seed: int = 0,
) -> list[Agreement]:  # fmt: skip
    """Both modes at every point; one row per point and metric of METRICS."""
    rows = []
    exact_runs = simulate_levels(fleet, prompts, workload, base, points, seed)
    fast_runs = simulate_fast(fleet, prompts, workload, base, points, seed)
    for run, fast_run in zip(exact_runs, fast_runs, strict=True):
        exact, fast = summarize(run.records), summarize(fast_run.records)
        values = {
            "ttft_p50": (exact.ttft.p50, fast.ttft.p50),
            "tpot_p50": (exact.tpot.p50, fast.tpot.p50),
            "output_throughput": (exact.output_throughput, fast.output_throughput),
        }
        rows += [Agreement(run.label, metric, *values[metric]) for metric in METRICS]
    return rows
