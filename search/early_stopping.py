"""Early stopping at rungs: pure decisions on tables of what trials showed at each rung.

The driver trains a trial rung by rung and, at each rung, asks ``decide`` whether it goes on.
Nothing here reads a database or a clock, so every rule is unit-tested on hand-made tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .pareto import dominates


@dataclass(frozen=True)
class RungResult:
    """What one trial showed at a rung: its best accuracy up to the rung, and its GMACs."""

    number: int
    accuracy: float
    gmacs: float


@dataclass(frozen=True)
class Decision:
    go_on: bool
    reason: str | None = None  # why the trial stops


def decide(rung: int, trial: RungResult, earlier: Sequence[RungResult]) -> Decision:
    """Stop ``trial`` if a lower-numbered trial at the same rung is at least as accurate and as cheap."""
    mine = (trial.accuracy, trial.gmacs)
    for other in earlier:
        if other.number < trial.number and dominates((other.accuracy, other.gmacs), mine, ["maximize", "minimize"]):
            return Decision(False, f"dominated at epoch {rung} by trial {other.number}")
    return Decision(True)
