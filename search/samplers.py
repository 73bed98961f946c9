"""Optuna samplers by name, each seeded per trial and shown what early-stopped trials revealed.

Multi-objective TPE (multivariate, grouped for conditional spaces, constant liar for parallel
trials) is the default. Two things are added around every sampler:

* Per-trial randomness. A trial's sampler is seeded from the study seed and the trial's number
  (``trial_seed``), not once per driver: a resumed driver, or a second driver on the same study,
  continues where the study stands instead of replaying the random sequence from its start,
  while two uninterrupted runs with one seed still try the same configurations in order.
* Partial results. Optuna's samplers read a PRUNED trial as "worse than every complete trial"
  (TPE) or not at all (NSGA-II, GP). An early-stopped trial did show something at its rung, so
  the sampler sees it as complete, with the final accuracy its rung accuracy predicts
  (``early_stopping.estimate_final_accuracy``) and its real costs. This view exists only for the
  sampler: the study, the fronts, the plots and the hypervolume never see the estimate.
  Rejected trials stay PRUNED with their constraints, which is how TPE learns infeasibility.
  NSGA-II and GP read neither PRUNED trials nor, unasked, constraints: they are shown a rejected
  trial as complete with the worst accuracy, its real costs and the slowest latency seen, or GP
  would propose the same configurations over the budget again and again.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from layers import Registry

from . import records
from .early_stopping import estimate_final_accuracy
from .optuna_adapter import SamplerView, without_constraints

SAMPLERS: Registry = Registry("sampler")
#: Trial seeds are study_seed * SEED_STRIDE + trial number: a prime, so that the trials of two
#: studies whose seeds differ by one never share a seed for any realistic trial count.
SEED_STRIDE = 100_003
#: Optuna's samplers (numpy's generators) take seeds below 2**32; trial seeds wrap around it, so a
#: large study seed (a date such as 20240101) or a negative one seeds every trial as well.
SEED_RANGE = 2**32


#: Options the project sets where Optuna's defaults differ, by sampler (a user's options win).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {"multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 10},
    "nsga2": {"population_size": 16},
}


@SAMPLERS.register("tpe")
def tpe(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, **{**_DEFAULTS["tpe"], **options})


@SAMPLERS.register("nsga2")
def nsga2(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **{**_DEFAULTS["nsga2"], **options})


@SAMPLERS.register("random")
def random(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


@SAMPLERS.register("gp")
def gp(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, **options)


def trial_seed(study_seed: int | None, number: int) -> int | None:
    """The seed of trial ``number``: its sampling and its training. None for an unseeded study."""
    return None if study_seed is None else (study_seed * SEED_STRIDE + number) % SEED_RANGE


def create_sampler(name: str, seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The named sampler, seeded, wrapped so that it learns from early-stopped trials."""
    factory, _ = SAMPLERS.parse(name)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return PartialResultsSampler(factory(seed, options))
        except TypeError as err:
            raise ValueError(f"sampler {name!r}: bad option ({err})") from None


#: Options that count the trials of a sampler's start-up (TPE's and GP's random trials) or of its
#: first generation (NSGA-II's).
_STARTUP_COUNTS = ("n_startup_trials", "population_size")
#: The most start-up trials the options check runs: past a few, a longer start-up only delays
#: the same code (a probe's trials cost time quadratic in their number).
PROBE_STARTUP = 10


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError unless the sampler runs with ``options``, past its start-up.

    Optuna stores most options unchecked (TPE's ``gamma: 0.2``, a string for a count), so a bad
    one would first fail at the trial that uses it, mid-run. The sampler is run instead on a small
    in-memory study of one float and one categorical parameter, for as many trials as its
    start-up or first generation takes (at most ``PROBE_STARTUP``: a longer one is shortened for
    the check), and two more.
    """
    probe, trials = dict(options), PROBE_STARTUP + 2
    for key, value in {**_DEFAULTS.get(name, {}), **options}.items():
        # Only a whole number is shortened: any other value is the sampler's to refuse, at once.
        if key in _STARTUP_COUNTS and isinstance(value, int) and not isinstance(value, bool):
            if value > PROBE_STARTUP:
                probe[key] = value = PROBE_STARTUP
            trials = value + 2
    sampler = create_sampler(name, 0, probe)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a probe
    try:
        study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    finally:
        optuna.logging.set_verbosity(verbosity)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(trials):
                trial = study.ask()
                x, kind = trial.suggest_float("x", 0.0, 1.0), trial.suggest_categorical("kind", ["a", "b"])
                study.tell(trial, [x, 1.0 - x if kind == "a" else x])
    except Exception as err:  # whatever the option breaks inside the sampler
        raise ValueError(f"sampler {name!r}: bad option ({type(err).__name__}: {err})") from None


def seen_by_sampler(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` with every early-stopped one turned complete, valued by what its rung predicts."""
    objectives = list(study.metric_names or [])
    complete_curves = [
        t.user_attrs["curve"] for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("curve")
    ]
    seen = []
    for trial in trials:
        record = records.TrialRecord.from_frozen(trial)
        if trial.state != TrialState.PRUNED or record.status != records.PRUNED or not record.curve or not objectives:
            seen.append(trial)
            continue
        estimate = estimate_final_accuracy(max(record.curve), len(record.curve), complete_curves)
        shown = copy.copy(trial)
        shown.state = TrialState.COMPLETE
        shown.values = records.objective_values(
            objectives, accuracy=estimate, gmacs=record.gmacs, mparams=record.mparams, latency_ms=record.latency_ms
        )
        seen.append(shown)
    return seen


def rejected_as_worst(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` with every rejected one that was costed turned complete: accuracy 0 at its costs."""
    objectives = list(study.metric_names or [])
    slowest = max((t.user_attrs.get("latency_ms") or 0.0 for t in trials), default=0.0)
    seen = []
    for trial in trials:
        record = records.TrialRecord.from_frozen(trial)
        if record.status != records.REJECTED or record.gmacs is None or not objectives:
            seen.append(trial)  # an invalid combination was never costed: nothing to show
            continue
        shown = without_constraints(trial)  # what they learn from is its values
        shown.state = TrialState.COMPLETE
        shown.values = records.objective_values(
            objectives, accuracy=0.0, gmacs=record.gmacs, mparams=record.mparams, latency_ms=slowest
        )
        seen.append(shown)
    return seen


class PartialResultsSampler(optuna.samplers.BaseSampler):
    """Any sampler, reading the study through ``seen_by_sampler`` (and, unless it reads PRUNED
    trials and their constraints as TPE does, ``rejected_as_worst``)."""

    def __init__(self, base: optuna.samplers.BaseSampler):
        self.base = base
        self.reads_rejections = isinstance(base, optuna.samplers.TPESampler)

    def _view(self, study: optuna.Study) -> SamplerView:
        def view(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
            seen = seen_by_sampler(study, trials)
            return seen if self.reads_rejections else rejected_as_worst(study, seen)

        return SamplerView(study, view)

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.base.reseed_rng()
