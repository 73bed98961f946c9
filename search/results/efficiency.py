"""How a study's front grows with the compute spent: hypervolume against cumulative training compute.

This is the measure by which one search strategy is judged better than another (random sampling,
say): a larger hypervolume for the same training compute. Three choices make it comparable
across runs, machines and days:

* compute is counted, not timed: each trial's ``train_macs`` (3 x its forward MACs per image x
  the images it trained on), so a slow day changes nothing;
* trials enter in the order of their numbers, which is the order the driver asks and tells
  them, so the curve does not depend on which parallel trial happened to finish first;
* the reference point is fixed before any run (``reference_point``): chance-level accuracy of 0
  and the space's own budget for the costs, never the worst value a run happened to see.

Only complete trials add to the front; pruned, failed and rejected trials add their compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..pareto import hypervolume
from ..records import COMPLETE, TrialRecord


@dataclass(frozen=True)
class CurvePoint:
    trial: int  # the trial whose end this point marks
    compute: float  # training MACs spent by the trials up to this one
    hypervolume: float  # of the complete trials up to this one


def reference_point(objectives: Sequence[str], budget: Mapping[str, float | None]) -> list[float] | None:
    """The fixed reference: accuracy 0, GMACs at ``max_gmacs``, parameters (millions) at
    ``max_params``. None when an objective has no bound known before the run (latency, a budget
    the space does not set, or a study whose objectives Optuna alone names, "objective 0"): a
    reference taken from the results would move with them."""
    bounds = {
        "accuracy": 0.0,
        "gmacs": budget.get("max_gmacs"),
        "params": budget["max_params"] / 1e6 if budget.get("max_params") else None,
        "latency": None,
    }
    point = [bounds.get(name) for name in objectives]
    return None if any(v is None for v in point) else point


def hypervolume_curve(
    records: Sequence[TrialRecord], reference: Sequence[float], directions: Sequence[str]
) -> list[CurvePoint]:
    """One point per trial that spent compute or completed, in trial-number order."""
    points: list[CurvePoint] = []
    spent, front_values = 0.0, []
    for record in sorted(records, key=lambda r: r.number):
        if record.train_macs <= 0 and record.status != COMPLETE:
            continue
        spent += record.train_macs
        if record.status == COMPLETE and record.values:
            front_values.append(record.values)
        points.append(CurvePoint(record.number, spent, hypervolume(front_values, reference, directions)))
    return points


def hypervolume_at(curve: Sequence[CurvePoint], compute: float) -> float:
    """The hypervolume a run had reached once it had spent ``compute`` (0 before its first trial)."""
    reached = [p.hypervolume for p in curve if p.compute <= compute]
    return reached[-1] if reached else 0.0
