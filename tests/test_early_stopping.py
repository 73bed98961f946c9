"""The rung decisions of early stopping, on hand-made rung tables and records: no search, no database."""

from __future__ import annotations

import pytest

from search.early_stopping import RungResult, best, decide, estimate_final_accuracy, rung_epochs, rung_field
from search.records import COMPLETE, INTERRUPTED, PRUNED, RUNNING, STALE, TrialRecord

MAX_MIN = ["maximize", "minimize"]  # accuracy up, GMACs down


def table(*rows: tuple[float, float]) -> list[RungResult]:
    """Trials 0, 1, 2, ... with (accuracy at the rung, GMACs)."""
    return [RungResult(number, values) for number, values in enumerate(rows)]


def go_on(trial: RungResult, earlier: list[RungResult], reduction: int = 2, min_trials: int = 1) -> bool:
    return decide(3, trial, earlier, reduction=reduction, min_trials=min_trials, directions=MAX_MIN).go_on


def test_rungs_are_geometric_or_explicit_and_below_the_trials_epochs():
    assert rung_epochs(10, min_epochs=3, reduction=2) == (3, 6)
    assert rung_epochs(10, min_epochs=1, reduction=3) == (1, 3, 9)
    assert rung_epochs(10, rungs=[4, 7, 12]) == (4, 7)
    assert rung_epochs(4, rungs=[4, 7]) == ()  # a rung at the last epoch decides nothing


def test_best_takes_whole_fronts_first():
    # Front 0: trials 0 and 1 (accurate but costly, cheap but weaker); trial 2 is dominated by 0.
    points = [(0.9, 3.0), (0.5, 1.0), (0.8, 4.0), (0.1, 5.0)]
    assert sorted(best(points, 2, MAX_MIN)) == [0, 1]
    assert sorted(best(points, 3, MAX_MIN)) == [0, 1, 2]


def test_best_breaks_a_front_by_crowding_then_by_number():
    # One front of four: the two ends have infinite crowding distance; of the inner two, trial 2
    # sits in the wider gap (it is farther from both neighbours).
    front = [(0.9, 4.0), (0.85, 3.5), (0.5, 2.0), (0.2, 1.0)]
    assert sorted(best(front, 2, MAX_MIN)) == [0, 3]
    assert sorted(best(front, 3, MAX_MIN)) == [0, 2, 3]
    # Equal points: the lower number wins.
    assert best([(0.5, 1.0), (0.5, 1.0)], 1, MAX_MIN) == [0]


def test_a_trial_goes_on_when_it_is_among_the_best_half():
    earlier = table((0.2, 1.0), (0.3, 2.0), (0.1, 3.0))
    assert go_on(RungResult(3, (0.9, 0.5)), earlier)  # dominates everyone
    assert not go_on(RungResult(3, (0.05, 4.0)), earlier)  # dominated by everyone


def test_a_trial_on_the_front_can_still_stop_when_the_front_is_crowded():
    # Four earlier trials on one front; the fifth lands between two of them, in the tightest gap.
    earlier = table((0.9, 4.0), (0.7, 3.0), (0.5, 2.0), (0.3, 1.0))
    decision = decide(3, RungResult(4, (0.6, 2.5)), earlier, reduction=2, min_trials=1, directions=MAX_MIN)
    assert not decision.go_on
    assert decision.reason == (
        "stopped at epoch 3: not among the best 2 of the 5 trials at this rung (non-dominated front 1; 1/2 go on)"
    )


def test_the_reduction_sets_how_many_go_on():
    earlier = table((0.9, 1.0), (0.8, 1.0), (0.7, 1.0), (0.6, 1.0), (0.5, 1.0))
    second = RungResult(5, (0.85, 1.0))  # second best of six
    assert go_on(second, earlier, reduction=2)  # the best 3 go on
    assert not go_on(second, earlier, reduction=6)  # only the best one does


def test_too_few_earlier_trials_and_it_goes_on():
    earlier = table((0.9, 1.0), (0.8, 1.0))
    worst = RungResult(2, (0.1, 9.0))
    assert go_on(worst, earlier, min_trials=3)
    assert not go_on(worst, earlier, min_trials=2)


def test_only_lower_numbered_trials_count():
    later = [RungResult(7, (0.99, 0.1)), RungResult(8, (0.98, 0.1))]
    assert go_on(RungResult(5, (0.1, 9.0)), later, min_trials=1)  # nobody earlier reached the rung


@pytest.mark.parametrize("rung_accuracy, expected", [(0.1, 0.3), (0.25, 0.6), (0.4, 0.9)])
def test_a_stopped_trial_is_estimated_by_its_place_at_the_rung(rung_accuracy, expected):
    # Three complete trials went past epoch 2 at 0.1, 0.25, 0.4 and ended at 0.3, 0.6, 0.9.
    curves = [[0.05, 0.1, 0.2, 0.3], [0.2, 0.25, 0.5, 0.6], [0.3, 0.4, 0.8, 0.9]]
    assert estimate_final_accuracy(rung_accuracy, 2, curves) == pytest.approx(expected)


def test_without_enough_complete_trials_the_estimate_is_the_rung_accuracy():
    assert estimate_final_accuracy(0.3, 2, [[0.1, 0.2, 0.9]]) == 0.3


def test_a_retried_trial_meets_no_earlier_run_of_itself_at_a_rung():
    """Trial 5 passed rung 2 and was interrupted; its retry, trial 9, tied with it there and lost
    to the lower number, stopped by its own earlier run."""

    def reached(number: int, status: str, curve: list[float]) -> TrialRecord:
        return TrialRecord(number, "RUNNING", status, {}, None, gmacs=0.1, curve=curve)

    records = [
        reached(3, COMPLETE, [0.5, 0.6, 0.7]),
        reached(4, PRUNED, [0.4]),  # stopped before the rung
        reached(5, INTERRUPTED, [0.7, 0.8]),
        reached(6, STALE, [0.6, 0.7]),
        reached(7, RUNNING, [0.5, 0.6]),  # another driver's trial, on its way
        reached(10, COMPLETE, [0.9, 0.9]),  # later than trial 9
    ]
    assert [r.number for r in rung_field(records, 9, rung=2)] == [3, 7]
