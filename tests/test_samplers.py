"""What the samplers are shown, and how each trial's sampling is seeded."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.records import PRUNED, REJECTED
from search.samplers import create_sampler, seen_by_sampler, trial_seed

X = {"x": FloatDistribution(0.0, 1.0)}


def study_with(*trials) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "gmacs"])
    for trial in trials:
        study.add_trial(trial)
    return study


def complete(x: float, curve: list[float], gmacs: float = 1.0):
    return create_trial(
        params={"x": x},
        distributions=X,
        values=[curve[-1], gmacs],
        user_attrs={"curve": curve, "gmacs": gmacs, "mparams": 0.1, "status": "complete"},
    )


def stopped(x: float, curve: list[float], gmacs: float = 1.0):
    return create_trial(
        params={"x": x},
        distributions=X,
        state=TrialState.PRUNED,
        user_attrs={"curve": curve, "gmacs": gmacs, "mparams": 0.1, "status": PRUNED},
    )


def rejected(x: float):
    trial = create_trial(
        params={"x": x},
        distributions=X,
        state=TrialState.PRUNED,
        user_attrs={"gmacs": 9.0, "mparams": 0.1, "status": REJECTED},
    )
    trial.set_constraint("max_gmacs", 1.25)
    return trial


def test_an_early_stopped_trial_is_shown_complete_with_the_accuracy_its_rung_predicts():
    curves = [[0.1, 0.2, 0.3, 0.3], [0.2, 0.4, 0.5, 0.6], [0.3, 0.6, 0.8, 0.9]]
    study = study_with(*(complete(0.1 * i, c) for i, c in enumerate(curves)), stopped(0.5, [0.25, 0.5], gmacs=2.0))
    shown = seen_by_sampler(study, study.get_trials(deepcopy=False))[-1]
    assert shown.state == TrialState.COMPLETE
    assert shown.values == pytest.approx([0.75, 2.0])  # 0.5 at epoch 2 lies midway between 0.4 and 0.6
    assert study.trials[-1].state == TrialState.PRUNED and study.trials[-1].values is None  # the study is untouched


def test_a_rejected_trial_stays_pruned_and_infeasible():
    study = study_with(complete(0.1, [0.5, 0.6]), rejected(0.9))
    shown = seen_by_sampler(study, study.get_trials(deepcopy=False))[-1]
    assert shown.state == TrialState.PRUNED and shown.constraints == {"max_gmacs": 1.25}


@pytest.mark.parametrize(("name", "state"), [("tpe", TrialState.PRUNED), ("nsga2", "worst"), ("gp", "worst")])
def test_samplers_that_ignore_pruned_trials_see_a_rejected_one_as_the_worst(name, state):
    """GP and NSGA-II read no PRUNED trial: under a tight budget GP proposed the same rejected
    configurations for 200 trials in a row and the study ended short of its count."""
    study = study_with(complete(0.1, [0.5, 0.6]), rejected(0.9))
    shown = create_sampler(name, 0, {})._view(study).get_trials(deepcopy=False)[-1]
    if state == "worst":
        assert shown.state == TrialState.COMPLETE and shown.values == [0.0, 9.0]  # no accuracy, its real cost
        assert shown.constraints == {}  # GP fails unless every trial it reads carries the same ones
    else:
        assert shown.state == state and shown.constraints == {"max_gmacs": 1.25}


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_samples_through_the_view(name):
    study = study_with(*(complete(i / 10, [i / 20, i / 10]) for i in range(6)), stopped(0.95, [0.4]), rejected(0.99))
    sampler = create_sampler(name, 0, {"n_startup_trials": 2} if name in ("tpe", "gp") else {})
    study.sampler = sampler
    trial = study.ask()
    assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0


def test_each_trial_has_its_own_seed_and_an_unseeded_study_none():
    seeds = {trial_seed(0, n) for n in range(100)} | {trial_seed(1, n) for n in range(100)}
    assert len(seeds) == 200
    assert trial_seed(None, 3) is None


@pytest.mark.parametrize("study_seed", [42949, 20240101, -1])
def test_every_study_seed_gives_trial_seeds_the_samplers_take(study_seed):
    """From 42949 up, and below 0, the first trial's sampler refused its seed: a traceback mid-run."""
    for name in ("tpe", "random", "nsga2", "gp"):
        create_sampler(name, trial_seed(study_seed, 7), {})
    assert trial_seed(3, 7) == 3 * 100_003 + 7  # seeds that always fitted are as before


def test_a_trial_seed_fixes_what_is_sampled():
    def first(seed: int) -> float:
        study = optuna.create_study(sampler=create_sampler("tpe", seed, {}))
        return study.ask().suggest_float("x", 0.0, 1.0)

    assert first(trial_seed(0, 5)) == first(trial_seed(0, 5)) != first(trial_seed(0, 6))


def test_checking_sampler_options_logs_nothing(caplog):
    """The probe study announced itself ("A new study created in memory") at every space load."""
    from search.samplers import check_options

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level("INFO", logger="optuna"):
            check_options("tpe", {"n_startup_trials": 2})
    finally:
        optuna.logging.disable_propagation()
    assert caplog.records == []


@pytest.mark.parametrize("name, key", [("tpe", "n_startup_trials"), ("nsga2", "population_size")])
def test_the_options_check_shortens_a_long_start_up(monkeypatch, name, key):
    """A start-up of 2000 trials was probed in full: 29 s of loading, and hours for larger counts."""
    from search import samplers

    built = []
    real = samplers.create_sampler
    monkeypatch.setattr(samplers, "create_sampler", lambda *args: built.append(args[2]) or real(*args))
    samplers.check_options(name, {key: 2000})
    assert built == [{key: samplers.PROBE_STARTUP}]
