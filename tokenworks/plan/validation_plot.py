"""The chart of `plan validate`: each metric, measured and simulated, against the load level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from tokenworks.plan.validation import METRICS, Validation


def plot_validation(validation: Validation, path: Path, title: str) -> Path:
    """One panel a metric (2 x 3): measured and simulated at each point, in the sweep's order."""
    figure, grid = plt.subplots(2, 3, figsize=(12, 6.5))
    points = validation.points
    levels = [_level(p.concurrency, p.request_rate) for p in points]
    positions = list(range(len(points)))
    for axes, metric in zip(grid.flat, METRICS, strict=True):
        for side, style in (("measured", "-o"), ("simulated", "--s")):
            values = [getattr(p.cells[metric.key], side) for p in points]
            shown = [(x, v * metric.scale) for x, v in zip(positions, values, strict=True) if v is not None]
            if shown:
                axes.plot([x for x, _ in shown], [v for _, v in shown], style, label=side, markersize=4)
        median = validation.medians.get(metric.key)
        error = "" if median is None else (f"{median:.1f} pts" if metric.points else f"{median:.1%}")
        axes.set_title(f"{metric.name} (median |error| {error or 'n/a'})", fontsize=9)
        axes.set_ylabel(metric.unit, fontsize=8)
        axes.set_xticks(positions, levels, fontsize=7, rotation=30)
        axes.grid(alpha=0.3)
    grid.flat[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _level(concurrency: int | None, rate: float | None) -> str:
    return f"{rate:g}/s" if rate is not None else f"c={concurrency}"
