"""A simulated point as the benchmark's `PointResult`, and the results directory it writes.

Every figure comes from the bench's own functions of the records (metrics, cost, validity), so a
simulated point and a measured one are read, compared and charted alike. What cannot be measured
in a simulation is said so: the energy is estimated from the replicas' simulated busy time times
the hardware's TDP, and the run, its points and the report's title say "simulated".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.bench.client import EndpointInfo
from tokenworks.bench.economics import PriceBook, token_cost
from tokenworks.bench.energy import EnergyReading, energy_efficiency
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.metrics import RunMetrics, summarize
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.report import ResultFiles, write_results
from tokenworks.bench.runner import Accounting, PointResult
from tokenworks.bench.slo import SLO
from tokenworks.bench.sweep import SweepResult
from tokenworks.bench.validity import Flag, validity_flags
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.plan.simulator import SimulationStats

ENERGY_FLAG = Flag(
    "energy_estimated", "warning",
    "energy is estimated from the replicas' simulated busy time x the hardware's TDP (idle power counts as zero)",
)  # fmt: skip


@dataclass(slots=True)
class SimulatedPoint:
    point: PointResult
    stats: SimulationStats

    def summary(self) -> dict[str, Any]:
        """What run.json keeps of the simulation behind a point."""
        stats = self.stats
        return {
            "label": self.point.label,
            "steps": stats.steps,
            "simulated_seconds": stats.end,
            "replica_busy_seconds": stats.busy_seconds,
            "preemptions": stats.preemptions,
            "prefix_hit_rate": stats.prefix_hit_rate,
            "route_reasons": stats.route_reasons,
            "wall_seconds": stats.wall_seconds,
        }


def simulated_point(
    records: list[RequestRecord], stats: SimulationStats, workload: WorkloadOptions, load: LoadOptions,
    slo: SLO | None, accounting: Accounting, book: PriceBook, label: str,
) -> SimulatedPoint:  # fmt: skip
    metrics = summarize(records, slo, accounting.devices, accounting.device_label)
    tdp = book.get(accounting.hardware).tdp_watts
    energy = estimated_energy(stats, metrics, tdp * accounting.devices)
    flags = [
        ENERGY_FLAG if flag.code == "energy_estimated" else flag for flag in validity_flags(records, metrics, energy)
    ]
    point = PointResult(
        label=label, workload=workload, load=load, metrics=metrics, cost=token_cost(book, accounting.hardware, metrics),
        energy=energy, efficiency=energy_efficiency(energy, metrics, tdp), flags=flags, records=records,
        started_at=time.time(),
    )  # fmt: skip
    return SimulatedPoint(point, stats)


def estimated_energy(stats: SimulationStats, metrics: RunMetrics, watts: float) -> EnergyReading:
    """TDP x the replicas' mean utilisation over the run, over the metrics' window."""
    start, end = metrics.window_start or 0.0, metrics.window_end or 0.0
    replicas = max(len(stats.busy_seconds), 1)
    utilisation = min(1.0, sum(stats.busy_seconds) / (replicas * stats.end)) if stats.end > 0 else 0.0
    joules = watts * utilisation * max(end - start, 0.0)
    return EnergyReading(
        joules=joules, mean_watts=joules / (end - start) if end > start else None, source="estimated",
        label="estimated", devices=1, samples=0, max_gap_seconds=0.0, interval=0.0, window_start=start,
        window_end=end,
    )  # fmt: skip


def write_simulated(
    out: Path, points: list[SimulatedPoint], model: str, workload: WorkloadOptions, load: LoadOptions,
    slo: SLO | None, accounting: Accounting, command: str, simulation: dict[str, Any],
    max_model_len: int | None = None,
) -> ResultFiles:  # fmt: skip
    """The bench's results directory, labelled simulated (run.json's `simulated`, `simulation`
    and `tool`, each point's label, the report's title)."""
    endpoint = EndpointInfo("simulated", model, [model], "tokenworks plan simulate", max_model_len)
    result = SweepResult(endpoint, [entry.point for entry in points], {})
    extra = {
        "tool": f"tokenworks plan simulate {_version()}",
        "simulated": True,
        "simulation": simulation | {"points": [entry.summary() for entry in points]},
    }
    return write_results(
        out, result, workload, load, slo, accounting, command, extra, title=f"tokenworks plan (simulated): {model}"
    )


def _version() -> str:
    from tokenworks import __version__

    return __version__
