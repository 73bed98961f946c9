"""Search quality, through the driver with a trial body that trains nothing (``tests/fakes.py``):
early stopping prunes exactly what its rule names and never a reference, rejections teach the
sampler where the budget lies, a resumed driver never repeats a configuration (two drivers on one
study: tests/test_faults.py), and the efficiency benchmark's code runs end to end."""

from __future__ import annotations

import json
import os
import signal
import statistics
from pathlib import Path

import optuna
import pytest
from conftest import (
    WIDE_SPACE,
    counted,
    load_study,
    records_of,
    repeated_configurations,
    sqlite_url,
    start_fake_driver,
    wait_for,
    write_space,
)

from search.display import Display
from search.driver import Driver
from search.early_stopping import RungResult, decide
from search.records import COMPLETE, PRUNED, REJECTED, TrialRecord, objective_values
from search.records import records as read_records
from search.space import load_space
from tests.fakes import curve_segment

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("session_ray")

SPACE = WIDE_SPACE


def search(folder: Path, **sections) -> list[TrialRecord]:
    spec = load_space(write_space(folder, space=SPACE, **sections))
    Driver(spec, results=folder / "results", display=Display(quiet=True), segment=curve_segment).run()
    return read_records(load_study(sqlite_url(folder)))


def rung_result(record: TrialRecord, rung: int) -> RungResult:
    values = objective_values(
        ["accuracy", "gmacs"],
        accuracy=max(record.curve[:rung]),
        gmacs=record.gmacs,
        mparams=record.mparams,
        latency_ms=record.latency_ms,
    )
    return RungResult(record.number, tuple(values))


def expected_decisions(records: list[TrialRecord], rungs: list[int], **rule) -> dict[tuple[int, int], bool]:
    """(trial, rung) -> whether the rule lets the trial go on, from what lower-numbered trials showed."""
    out = {}
    for record in records:
        for rung in rungs:
            if len(record.curve) < rung:
                break
            earlier = [rung_result(r, rung) for r in records if r.number < record.number and len(r.curve) >= rung]
            decision = decide(rung, rung_result(record, rung), earlier, directions=["maximize", "minimize"], **rule)
            out[record.number, rung] = decision.go_on
    return out


@pytest.fixture(scope="module")
def stopped_search(tmp_path_factory, session_ray) -> list[TrialRecord]:
    rule = {"reduction": 2, "min_trials": 2}
    return search(
        tmp_path_factory.mktemp("stopping"),
        training={"epochs": 6, "batch_size": 64, "lr": 3.0e-3},
        early_stopping={"rungs": [2, 4], **rule},
        trials={"count": 14, "parallel": 2},
    )


def test_pruning_happens_and_prunes_what_the_rule_names(stopped_search):
    trained = [r for r in stopped_search if r.curve]
    expected = expected_decisions(trained, [2, 4], reduction=2, min_trials=2)
    pruned = [r for r in trained if r.status == PRUNED]
    assert len(pruned) >= 3
    for record in trained:
        if record.reference:
            continue
        for rung in (2, 4):
            if (record.number, rung) not in expected:
                break
            went_on = len(record.curve) > rung
            assert went_on == expected[record.number, rung], (record.number, rung, record.reason)
            if not went_on:
                assert record.status == PRUNED and record.reason.startswith(f"stopped at epoch {rung}:")


def test_references_always_run_to_the_end(stopped_search):
    references = [r for r in stopped_search if r.reference]
    assert {r.reference for r in references} == {"weightformer", "attention", "static"}
    assert all(r.status == COMPLETE and len(r.curve) == 6 for r in references)
    expected = expected_decisions([r for r in stopped_search if r.curve], [2, 4], reduction=2, min_trials=2)
    # Not vacuous: the rule alone would have stopped a reference.
    assert any(not expected.get((r.number, rung), True) for r in references for rung in (2, 4))


def test_rejections_reach_the_sampler_as_constraints_and_grow_rarer(tmp_path):
    # max_gmacs at about the median configuration of this space: half of it is over budget.
    records = search(
        tmp_path,
        budget={"max_gmacs": 0.00027},
        trials={"count": 36, "parallel": 2},
        training={"epochs": 1, "batch_size": 64, "lr": 3.0e-3},
    )
    study = load_study(sqlite_url(tmp_path))
    rejected = [t for t in study.trials if t.user_attrs.get("status") == REJECTED]
    assert rejected and all(t.state == optuna.trial.TrialState.PRUNED for t in rejected)
    assert all(t.constraints["max_gmacs"] > 0 and t.values is None for t in rejected)
    finished = [r.number for r in counted(records)]
    middle = finished[len(finished) // 2]
    early = sum(r.status == REJECTED and r.number < middle for r in records) / sum(n < middle for n in finished)
    late = sum(r.status == REJECTED and r.number >= middle for r in records) / sum(n >= middle for n in finished)
    assert early >= 0.25 and late <= 0.6 * early, (early, late)


@pytest.mark.slow
def test_a_killed_and_resumed_driver_repeats_no_configuration(tmp_path, local_ray):
    space = write_space(tmp_path, space=SPACE, trials={"count": 24, "parallel": 2}, training={"epochs": 2})
    url = sqlite_url(tmp_path)

    driver = start_fake_driver(space, tmp_path / "results", local_ray)
    wait_for(lambda: len(counted(records_of(url))) >= 6, 240, "six finished trials", driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = max(r.number for r in read_records(load_study(url)))
    Driver(load_space(space), results=tmp_path / "results", display=Display(quiet=True), segment=curve_segment).run()
    records = read_records(load_study(url))
    assert len(counted(records)) == 24 and max(r.number for r in records) > before + 4  # the resumed run sampled
    assert repeated_configurations(records) == []


@pytest.mark.slow
def test_the_efficiency_benchmark_runs_end_to_end(tmp_path):
    from benchmarks import search_efficiency

    with pytest.raises(SystemExit):  # the benchmark exits 1 when a target is missed, as a failing test would
        search_efficiency.main(
            [
                "--smoke",
                "--seeds",
                "2",
                "--ablation-seeds",
                "1",
                "--workdir",
                str(tmp_path / "work"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    figures = json.loads((tmp_path / "out" / "search_efficiency.json").read_text())
    assert {row["strategy"] for row in figures["rows"]} == set(search_efficiency.STRATEGIES)
    assert figures["rank_correlation"] and figures["stopping_replay"] and figures["constraint_learning"]
    assert (tmp_path / "out" / "search_efficiency.html").stat().st_size > 0
    assert statistics.median(figures["bands"]["random-full"]["median"]) > 0
    default = optuna.load_study(study_name="default-s0", storage=f"sqlite:///{tmp_path / 'work' / 'default-s0.db'}")
    references = {t.user_attrs.get("reference") for t in default.trials} - {None}
    assert references == {"weightformer", "attention", "static"}  # every run is the search a user gets
    replayed = figures["bands"][search_efficiency.REPLAYED]["compute_tmacs"]
    assert 0 < replayed[-1] == pytest.approx(figures["replayed_stopping"]["reach_tmacs"], rel=0.05)
