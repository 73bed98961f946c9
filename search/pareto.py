"""Pareto dominance, the one notion behind early stopping, the live front, the report and exports."""

from __future__ import annotations

from collections.abc import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """a is at least as good as b in every objective and better in one."""
    better = False
    for x, y, direction in zip(a, b, directions):
        if direction == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order."""
    return [
        i for i, p in enumerate(points) if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)
    ]
