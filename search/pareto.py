"""Pareto dominance, the one notion behind early stopping, the live front, the report and exports."""
from __future__ import annotations

from typing import Sequence

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
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]


def hypervolume_2d(points: Sequence[Point], reference: Point, directions: Sequence[str]) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (2 objectives)."""
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    # Turn both into minimisation, keep points that beat the reference.
    pts = sorted({(p[0] * signs[0], p[1] * signs[1]) for p in points
                  if p[0] * signs[0] < reference[0] * signs[0] and p[1] * signs[1] < reference[1] * signs[1]})
    ref = (reference[0] * signs[0], reference[1] * signs[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area
