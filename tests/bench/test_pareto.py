"""The Pareto frontier on known point sets (ties, duplicates, a minimised axis) and reading it between points."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenworks.bench.pareto import interpolate_frontier, pareto_frontier
from tokenworks.errors import BenchError

X, Y = "interactivity", "output_throughput_per_device"


def point(x: float | None, y: float | None, name: str) -> dict:
    return {X: x, Y: y, "name": name}


def names(points: list) -> list[str]:
    return [p["name"] if isinstance(p, dict) else p.name for p in points]


POINTS = [
    point(2, 8, "p2"),
    point(1, 10, "p1"),
    point(2, 6, "p3"),  # below p2 at the same x
    point(3, 5, "p4"),
    point(1.5, 9.5, "p5"),  # beats neither p1 nor p2 on both axes: on the frontier
    point(0.5, 10, "p6"),  # ties p1 on y, worse x
    point(2, 8, "p7"),  # a duplicate of p2: one is kept, the first given
    point(3, 4, "p8"),  # below p4 at the same x
    point(None, 20, "no-tpot"),  # a run without interactivity has no place on the chart
    point(4, float("nan"), "nan"),
]


def test_frontier_of_throughput_against_interactivity() -> None:
    assert names(pareto_frontier(POINTS, X, Y)) == ["p1", "p5", "p2", "p4"]


def test_frontier_minimising_cost() -> None:
    cost = [
        {"x": 1, "usd": 0.5, "name": "q1"},
        {"x": 2, "usd": 1.0, "name": "q2"},
        {"x": 3, "usd": 3.0, "name": "q3"},  # q6 is as interactive and cheaper
        {"x": 2, "usd": 1.5, "name": "q4"},
        {"x": 1, "usd": 0.7, "name": "q5"},
        {"x": 3, "usd": 2.0, "name": "q6"},
        {"x": 0.5, "usd": 0.5, "name": "q7"},  # as cheap as q1, less interactive
    ]
    assert names(pareto_frontier(cost, "x", "usd", maximize_y=False)) == ["q1", "q2", "q6"]
    # minimising both: the least interactive, cheapest point alone
    assert names(pareto_frontier(cost, "x", "usd", maximize_x=False, maximize_y=False)) == ["q7"]


def test_frontier_of_dataclasses() -> None:
    @dataclass
    class Run:
        name: str
        interactivity: float
        tokens_per_joule: float

    runs = [Run("a", 10.0, 2.0), Run("b", 20.0, 1.0), Run("c", 15.0, 0.5)]
    assert names(pareto_frontier(runs, "interactivity", "tokens_per_joule")) == ["a", "b"]
    assert pareto_frontier([], X, Y) == []


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a != b


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=30))
def test_frontier_properties(pairs: list[tuple[int, int]]) -> None:
    points = [{"x": x, "y": y} for x, y in pairs]
    frontier = [(p["x"], p["y"]) for p in pareto_frontier(points, "x", "y")]
    assert len(set(frontier)) == len(frontier) == len(set(frontier) & set(pairs))
    assert not any(dominates(other, f) for f in frontier for other in pairs)
    assert all(p in frontier or any(dominates(f, p) for f in frontier) for p in pairs)
    assert [x for x, _ in frontier] == sorted(x for x, _ in frontier)
    assert [y for _, y in frontier] == sorted((y for _, y in frontier), reverse=True)  # monotone


def test_interpolation_only_along_the_frontier() -> None:
    frontier = pareto_frontier(POINTS, X, Y)  # (1, 10), (1.5, 9.5), (2, 8), (3, 5)
    assert interpolate_frontier(frontier, 2.5, X, Y) == 6.5
    assert interpolate_frontier(frontier, 1.25, X, Y) == 9.75
    assert interpolate_frontier(frontier, 1, X, Y) == 10
    assert interpolate_frontier(frontier, 3, X, Y) == 5
    assert interpolate_frontier(frontier, 0.99, X, Y) is None
    assert interpolate_frontier(frontier, 3.01, X, Y) is None
    assert interpolate_frontier(frontier[2:3], 2, X, Y) == 8
    assert interpolate_frontier(frontier[2:3], 2.5, X, Y) is None
    assert interpolate_frontier([], 2, X, Y) is None
    with pytest.raises(BenchError, match="needs both"):
        interpolate_frontier([point(1, None, "broken")], 1, X, Y)
