"""The Pareto frontier of sweep points, and reading values off it.

A sweep gives one point per concurrency or rate (per configuration); the frontier is the set
no other point beats. Charts put interactivity (tokens/s/user) on x and throughput per device,
cost per million tokens or tokens per joule on y. Points are dicts (rows of points.csv) or
objects with the axes as attributes.

A sweep has three frontiers (`FRONTIERS`): output throughput per device, cost per million
output tokens (lower is better) and output tokens per joule, each against interactivity and
each within one input/output length pair, since different workloads are not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any, TypeVar

from tokenworks.errors import BenchError

P = TypeVar("P")

# The three frontiers: (y column, maximise y). x is always interactivity (tokens/s per user), maximised.
FRONTIERS = {
    "throughput": ("output_throughput_per_device", True),
    "cost": ("cost_usd_per_million_output_tokens", False),
    "energy": ("energy_output_tokens_per_joule", True),
}
X_AXIS = "interactivity"


def value(point: Any, axis: str) -> float | None:
    """A point's coordinate on `axis`, or None where it has none (a run with no TPOT has no interactivity)."""
    raw = point.get(axis) if isinstance(point, dict) else getattr(point, axis, None)
    if raw is None:
        return None
    number = float(raw)
    return number if math.isfinite(number) else None


def pareto_frontier(points: Iterable[P], x: str, y: str, maximize_x: bool = True, maximize_y: bool = True) -> list[P]:
    """The non-dominated points, sorted by x ascending; points missing either value are left out.

    A point is dominated when another is at least as good on both axes and better on one. Of
    several identical points the first given is kept."""
    sign_x, sign_y = (1.0 if maximize_x else -1.0), (1.0 if maximize_y else -1.0)
    scored = []
    for point in points:
        px, py = value(point, x), value(point, y)
        if px is not None and py is not None:
            scored.append((sign_x * px, sign_y * py, px, point))
    # Best x first, ties broken by best y (the sort is stable, so identical points keep input order):
    # a point is on the frontier exactly when its y beats every point before it.
    scored.sort(key=lambda s: (-s[0], -s[1]))
    frontier, best_y = [], -math.inf
    for _, good_y, px, point in scored:
        if good_y > best_y:
            frontier.append((px, point))
            best_y = good_y
    return [point for _, point in sorted(frontier, key=lambda f: f[0])]


def interpolate_frontier(frontier: Sequence[Any], x_value: float, x: str, y: str) -> float | None:
    """The frontier's y at `x_value`, linear between neighbouring frontier points (so monotone, as the
    frontier is); None outside the frontier's x range, where nothing was measured."""
    pairs = [(value(p, x), value(p, y)) for p in frontier]
    if any(px is None or py is None for px, py in pairs):
        raise BenchError(f"every frontier point needs both '{x}' and '{y}'")
    pairs.sort()
    if not pairs or not pairs[0][0] <= x_value <= pairs[-1][0]:
        return None
    for (x0, y0), (x1, y1) in pairwise(pairs):
        if x0 <= x_value <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x_value - x0) / (x1 - x0)
    return pairs[0][1]  # a single-point frontier, read at its own x


def pair_label(input_tokens: str, output_tokens: str) -> str:
    """The name of one input/output length pair: the `workload` column of points.csv."""
    return f"in={input_tokens},out={output_tokens}"


def frontiers(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each of `FRONTIERS` over the rows of points.csv, computed within each length pair."""
    result: dict[str, list[dict[str, Any]]] = {}
    for name, (y, maximize_y) in FRONTIERS.items():
        on_frontier: list[dict[str, Any]] = []
        for pair in dict.fromkeys(row["workload"] for row in rows):
            candidates = [r for r in rows if r["workload"] == pair and r.get(X_AXIS) and r.get(y) is not None]
            on_frontier += pareto_frontier(candidates, X_AXIS, y, maximize_x=True, maximize_y=maximize_y)
        result[name] = on_frontier
    return result
