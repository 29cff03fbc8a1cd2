"""`plan validate`'s arithmetic: a measured sweep and its simulation, point by point, metric by metric.

A measured sweep is a `tokenworks bench` results directory: run.json says the workload, the load
(seed, warmup, arrivals) and each point's level; requests.jsonl holds every record. Each figure
compared is read from the two directories the same way (run.json's point rows, which the bench's
metrics wrote, and the prefix hit rate from the records), so an error is exact arithmetic on
what the two result files say. Errors are relative, (simulated - measured) / measured, except the
prefix hit rate's, which is the difference in percentage points.

Repeats of one sweep (the same workload, seed, levels and request counts, measured again) are
compared as one (`median_of`): each figure the median of the repeats' figures at its point (and
the calibration's per-request draws the median repeat's at c = 1: `median_repeat`). On a
shared host two measurements of one sweep minutes apart differ by more than the goals (a busy
minute slows one point of one repeat; docs/benchmarks.md, Plan, session 25), and a median of three
puts a point measured in a busy minute aside, as the bench's own figures put a slow request aside.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.errors import PlanError, TokenworksError


@dataclass(frozen=True, slots=True)
class Metric:
    key: str  # the field of a point row (run.json, points.csv); "prefix_hit_rate" from the records
    name: str
    unit: str  # how the table shows it
    scale: float  # row value x scale = shown value
    goal: float  # the goal on the median absolute error (relative, or points for the hit rate)
    points: bool = False  # the error is a difference in percentage points, not relative


METRICS = (
    Metric("ttft_p50_s", "TTFT p50", "ms", 1e3, 0.10),
    Metric("ttft_p99_s", "TTFT p99", "ms", 1e3, 0.20),
    Metric("tpot_p50_s", "TPOT p50", "ms", 1e3, 0.10),
    Metric("tpot_p99_s", "TPOT p99", "ms", 1e3, 0.20),
    Metric("output_throughput", "output tok/s", "tok/s", 1.0, 0.10),
    Metric("prefix_hit_rate", "prefix hit rate", "%", 100.0, 5.0, points=True),
)


@dataclass(slots=True)
class SweepPoint:
    """One point of a results directory: its level, how many requests it measured, its figures."""

    label: str
    concurrency: int | None
    request_rate: float | None
    input_tokens: str  # as asked (a sweep over --lengths has several pairs)
    output_tokens: str
    requests: int  # measured (warmup left out), as sent: the simulation sends as many
    figures: dict[str, float | None]
    repeat_figures: tuple[dict[str, float | None], ...] = ()  # each repeat's, of which `figures` are the medians


@dataclass(slots=True)
class ResultsDir:
    directory: Path
    model: str
    workload: WorkloadOptions
    load: LoadOptions  # the sweep's base: arrivals, warmup, timeout, seed
    points: list[SweepPoint]
    # Each measurement's records, point label -> its records, warmup included: one, or a repeat's each.
    runs: list[dict[str, list[RequestRecord]]]
    simulated: bool
    repeats: tuple[Path, ...] = ()  # the directories of the repeats its figures are the medians of

    def point_load(self, point: SweepPoint) -> LoadOptions:
        """The load the point ran under, its request count fixed to what it measured (a sweep
        bound by --duration sent however many fitted; the simulation sends exactly those)."""
        return replace(self.load, concurrency=point.concurrency, request_rate=point.request_rate,
                       num_requests=point.requests, duration=None)  # fmt: skip

    def point_workload(self, point: SweepPoint) -> WorkloadOptions:
        return replace(self.workload, input_tokens=point.input_tokens, output_tokens=point.output_tokens)


def prefix_hit_rate(records: list[RequestRecord]) -> float | None:
    """Cached prompt tokens / prompt tokens over the answered, measured requests; None when the
    server reported no cached counts (an endpoint without prompt_tokens_details)."""
    answered = [r for r in records if not r.warmup and r.ok]
    if not answered or all(r.cached_tokens is None for r in answered):
        return None
    prompt = sum(r.input_tokens or 0 for r in answered)
    return sum(r.cached_tokens or 0 for r in answered) / prompt if prompt else None


def read_results(directory: str | Path) -> ResultsDir:
    """A bench (or plan simulate) results directory, or PlanError saying what it lacks."""
    directory = Path(directory)
    run_file = directory / "run.json"
    remedy = "give a directory written by `tokenworks bench sweep` or `tokenworks bench run` (--out)"
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{directory} has no run.json; {remedy}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanError(f"{run_file} cannot be read ({error}); {remedy}") from None
    missing = [key for key in ("workload", "load", "points") if not run.get(key)]
    if missing:
        raise PlanError(f"{run_file} does not record the sweep's settings ({', '.join(missing)} missing); {remedy}")
    try:
        workload = WorkloadOptions(**run["workload"])
        workload.validate()
        load = LoadOptions(**run["load"])
        points = [_point(row) for row in run["points"]]
    except (TypeError, KeyError, ValueError, TokenworksError) as error:
        raise PlanError(f"{run_file} has settings this tokenworks cannot read ({error}); {remedy}") from None
    records = _records(directory / "requests.jsonl", remedy)
    for point in points:
        point.figures["prefix_hit_rate"] = prefix_hit_rate(records.get(point.label, []))
    model = (run.get("endpoint") or {}).get("model") or directory.name
    return ResultsDir(directory, model, workload, load, points, [records], bool(run.get("simulated")), (directory,))


def median_of(repeats: list[ResultsDir]) -> ResultsDir:
    """Repeats of one sweep as one: each point's figures the median of the repeats' (of those
    that have the figure), every repeat's records kept. PlanError when they are not one sweep."""
    first = repeats[0]
    for other in repeats[1:]:
        differs = [name for name, same in (
            ("model", other.model == first.model), ("workload", other.workload == first.workload),
            ("load (arrivals, warmup, seed)", other.load == first.load),
            ("points", [(p.label, p.requests) for p in other.points] == [(p.label, p.requests) for p in first.points]),
            ("kind", other.simulated == first.simulated),
        ) if not same]  # fmt: skip
        if differs:
            raise PlanError(f"{other.directory} is not a repeat of {first.directory}: its {', '.join(differs)} "
                            "differ; repeats send the same requests (workload, seed, levels and counts)")  # fmt: skip
    points = []
    for index, point in enumerate(first.points):
        figures = {}
        for key in point.figures:
            values = [value for repeat in repeats if (value := repeat.points[index].figures.get(key)) is not None]
            figures[key] = statistics.median(values) if values else None
        points.append(replace(point, figures=figures, repeat_figures=tuple(r.points[index].figures for r in repeats)))
    runs = [run for repeat in repeats for run in repeat.runs]
    directories = tuple(directory for repeat in repeats for directory in repeat.repeats)
    return replace(first, points=points, runs=runs, repeats=directories)


def median_repeat(point: SweepPoint, key: str) -> int:
    """Which repeat (its index in the runs) measured the median of `key` at `point`: of an even
    count the lower of the middle two; 0 when the point was measured once."""
    if not point.repeat_figures:
        return 0

    def rank(index: int) -> tuple[bool, float]:  # repeats without the figure last
        value = point.repeat_figures[index].get(key)
        return value is None, value or 0.0

    order = sorted(range(len(point.repeat_figures)), key=rank)
    return order[(len(order) - 1) // 2]


def _point(row: dict[str, Any]) -> SweepPoint:
    figures = {metric.key: row.get(metric.key) for metric in METRICS if metric.key in row}
    absent = [m.key for m in METRICS if not m.points and m.key not in row]
    if absent:
        raise KeyError(f"point {row.get('label')!r} lacks {', '.join(absent)}")
    rate = row.get("request_rate")
    return SweepPoint(
        label=str(row["label"]), concurrency=row.get("concurrency"), request_rate=None if rate in (None, "") else rate,
        input_tokens=str(row["input_tokens_asked"]), output_tokens=str(row["output_tokens_asked"]),
        requests=int(row["requests"]), figures=figures,
    )  # fmt: skip


def _records(path: Path, remedy: str) -> dict[str, list[RequestRecord]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PlanError(f"{path.parent} has no requests.jsonl; {remedy}") from None
    records: dict[str, list[RequestRecord]] = {}
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            point = data.pop("point")
            records.setdefault(point, []).append(RequestRecord.from_json(data))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise PlanError(f"{path}:{number} is not a request record ({error})") from None
    return records


# ---- the comparison ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    measured: float | None
    simulated: float | None
    error: float | None  # relative, or percentage points for the hit rate; None where a side has no value


def error_of(metric: Metric, measured: float | None, simulated: float | None) -> float | None:
    if measured is None or simulated is None:
        return None
    if metric.points:
        return (simulated - measured) * 100.0
    return (simulated - measured) / measured if measured else None


@dataclass(slots=True)
class PointComparison:
    label: str
    concurrency: int | None
    request_rate: float | None
    cells: dict[str, Cell]  # metric key -> cell

    def to_json(self) -> dict[str, Any]:
        cells = {
            key: {"measured": c.measured, "simulated": c.simulated, "error": c.error} for key, c in self.cells.items()
        }
        return {"label": self.label, "concurrency": self.concurrency, "request_rate": self.request_rate, "cells": cells}


@dataclass(slots=True)
class Validation:
    points: list[PointComparison]
    medians: dict[str, float | None] = field(default_factory=dict)  # metric key -> median |error|
    unmatched: list[str] = field(default_factory=list)  # measured points the simulation lacks

    def passes(self, metric: Metric) -> bool | None:
        median = self.medians.get(metric.key)
        return None if median is None else median <= metric.goal

    def to_json(self) -> dict[str, Any]:
        metrics = {
            m.key: {
                "name": m.name,
                "goal": m.goal,
                "median_abs_error": self.medians.get(m.key),
                "passes": self.passes(m),
            }
            for m in METRICS
        }
        return {
            "errors": "relative (simulated - measured) / measured; prefix_hit_rate: simulated - measured in points",
            "metrics": metrics,
            "points": [point.to_json() for point in self.points],
            "unmatched": self.unmatched,
        }


def compare(measured: list[SweepPoint], simulated: list[SweepPoint]) -> Validation:
    """Points matched by label (the bench's `point_label`: the length pair and the level)."""
    by_label = {point.label: point for point in simulated}
    comparisons, unmatched = [], []
    for point in measured:
        twin = by_label.get(point.label)
        if twin is None:
            unmatched.append(point.label)
            continue
        cells = {}
        for metric in METRICS:
            mine, theirs = point.figures.get(metric.key), twin.figures.get(metric.key)
            cells[metric.key] = Cell(mine, theirs, error_of(metric, mine, theirs))
        comparisons.append(PointComparison(point.label, point.concurrency, point.request_rate, cells))
    medians = {}
    for metric in METRICS:
        errors = [abs(p.cells[metric.key].error) for p in comparisons if p.cells[metric.key].error is not None]
        medians[metric.key] = statistics.median(errors) if errors else None
    return Validation(comparisons, medians, unmatched)
