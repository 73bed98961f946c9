"""Early stopping at rungs, as asynchronous successive halving for several objectives (MOASHA).

A trial trains rung by rung. When it reaches a rung, it goes on only if it is among the best
1/``reduction`` of the trials that have reached that rung so far, itself included, where "best"
is non-dominated sorting on the study's objectives (accuracy being the best accuracy up to the
rung) with NSGA-II's crowding distance breaking the tie inside the last front admitted, and the
lower trial number breaking what is left. Three rules keep it fair and reproducible:

* a trial is compared with lower-numbered trials only, so the decision does not depend on which
  parallel trial happened to arrive first;
* until ``min_trials`` earlier trials have reached the rung, a trial goes on: a ranking of two or
  three noisy accuracies says little;
* reference trials always run to the end (the driver does not ask).

Everything here is pure: the driver gathers the rung tables and applies the decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .pareto import crowding_distances, nondominated_ranks
from .records import RETRIED, TrialRecord

#: Below this many complete trials that passed a rung, a stopped trial's rung accuracy is taken
#: as its estimate: a quantile map needs a few pairs to mean anything.
MIN_PAIRS_FOR_ESTIMATE = 3


@dataclass(frozen=True)
class RungResult:
    """What one trial showed at a rung: its objective values there (accuracy: best up to the rung)."""

    number: int
    values: tuple[float, ...]


@dataclass(frozen=True)
class Decision:
    go_on: bool
    reason: str | None = None  # why the trial stops


def rung_epochs(
    epochs: int, *, rungs: Sequence[int] | None = None, min_epochs: int = 1, reduction: int = 2
) -> tuple[int, ...]:
    """The rungs of a trial that trains ``epochs`` epochs: the explicit ``rungs`` below it, or
    ``min_epochs * reduction^k`` below it."""
    if rungs is not None:
        return tuple(r for r in rungs if r < epochs)
    out, rung = [], min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= reduction
    return tuple(out)


def rung_field(records: Sequence[TrialRecord], number: int, rung: int) -> list[TrialRecord]:
    """The earlier trials that trial ``number`` is ranked against at ``rung``: those numbered below
    it that reached the rung, less the runs a retry repeats (interrupted or stale ones). Their
    configuration and seed run again as a later trial, which would otherwise meet its own earlier
    run at the rung, lose the tie to the lower number, and stop."""
    return [
        r
        for r in records
        if r.number < number and r.gmacs is not None and len(r.curve) >= rung and r.status not in RETRIED
    ]


def best(points: Sequence[Sequence[float]], count: int, directions: Sequence[str]) -> list[int]:
    """Indices of the ``count`` best points: whole non-dominated fronts first, then the most
    crowding-distant of the front that does not fit, then the lower index."""
    ranks = nondominated_ranks(points, directions)
    chosen: list[int] = []
    for rank in range(max(ranks, default=-1) + 1):
        layer = [i for i in range(len(points)) if ranks[i] == rank]
        if len(chosen) + len(layer) <= count:
            chosen += layer
            continue
        distance = crowding_distances([points[i] for i in layer])
        by_spread = sorted(range(len(layer)), key=lambda j: (-distance[j], layer[j]))
        chosen += [layer[j] for j in by_spread[: count - len(chosen)]]
        break
    return chosen


def decide(
    rung: int,
    trial: RungResult,
    earlier: Sequence[RungResult],
    *,
    reduction: int,
    min_trials: int,
    directions: Sequence[str],
) -> Decision:
    """Whether ``trial`` goes on from ``rung``, given what lower-numbered trials showed there."""
    peers = [r for r in earlier if r.number < trial.number]
    if len(peers) < min_trials:
        return Decision(True)
    field = [*peers, trial]
    keep = max(1, len(field) // reduction)
    if len(field) - 1 in best([r.values for r in field], keep, directions):
        return Decision(True)
    rank = nondominated_ranks([r.values for r in field], directions)[-1]
    return Decision(
        False,
        f"stopped at epoch {rung}: not among the best {keep} of the {len(field)} trials at this rung "
        f"(non-dominated front {rank + 1}; 1/{reduction} go on)",
    )


def estimate_final_accuracy(rung_accuracy: float, rung: int, complete_curves: Sequence[Sequence[float]]) -> float:
    """The final accuracy a trial stopped at ``rung`` would likely have reached.

    A quantile map from the complete trials that went past the rung: the k-th lowest accuracy at
    the rung maps to the k-th lowest final accuracy, linearly in between, and the ends hold beyond
    them. Monotone, and free of any assumption on the shape of the learning curves.
    """
    pairs = [(max(curve[:rung]), curve[-1]) for curve in complete_curves if len(curve) > rung]
    if len(pairs) < MIN_PAIRS_FOR_ESTIMATE:
        return rung_accuracy
    at_rung = sorted(a for a, _ in pairs)
    finals = sorted(f for _, f in pairs)
    return float(np.interp(rung_accuracy, at_rung, finals))
