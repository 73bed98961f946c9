"""Pareto dominance and what rests on it: fronts, non-dominated ranks, crowding and hypervolume.

Early stopping, the live front, the report, the exports and the efficiency benchmark all use these."""

from __future__ import annotations

import math
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


def _minimised(points: Sequence[Point], directions: Sequence[str]) -> list[list[float]]:
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    return [[x * s for x, s in zip(p, signs)] for p in points]


def nondominated_ranks(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front once it is removed, and so on."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        layer = {i for i in remaining if not any(dominates(points[j], points[i], directions) for j in remaining)}
        for i in layer:
            ranks[i] = rank
        remaining -= layer
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance within one set of points: larger is lonelier, the ends infinite."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, i, after in zip(order, order[1:], order[2:]):
            distance[i] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def hypervolume(points: Sequence[Point], reference: Point, directions: Sequence[str]) -> float:
    """The volume that ``points`` dominate, bounded by ``reference`` (points beyond it add nothing)."""
    ref = _minimised([reference], directions)[0]
    inside = [p for p in _minimised(points, directions) if all(x < r for x, r in zip(p, ref))]
    return _volume(inside, ref)


def _volume(points: list[list[float]], ref: list[float]) -> float:
    """Hypervolume of minimised points by slicing along the last objective (exact; O(n^d))."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    points = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, point in enumerate(points):
        upper = points[i + 1][-1] if i + 1 < len(points) else ref[-1]
        if upper > point[-1]:
            volume += (upper - point[-1]) * _volume([q[:-1] for q in points[: i + 1]], ref[:-1])
    return volume
