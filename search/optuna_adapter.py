"""Everything the search needs from Optuna (and optuna-dashboard) beyond their documented APIs, in one place.

The driver splits ``Study.ask`` in two steps that can each be retried through a database outage
(a claim that writes, a handle that only reads), it reads the parameters a queued trial was
enqueued with, and it shows samplers early-stopped trials as what they revealed (``SamplerView``).
Optuna has no public call for any of these. For the dashboard, artifacts are recorded in the
order a retry needs, and the study's artifacts are replaced as optuna-dashboard deletes them.
Each use below says which internal
behaviour it relies on and why; ``tests/test_optuna_adapter.py`` pins every one of them, so that
an Optuna upgrade which changes one fails there rather than in the middle of a search.
``pyproject.toml`` bounds optuna to the major version this module is written for.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import mimetypes
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.artifacts import ArtifactMeta
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

#: The system attribute in which ``Study.enqueue_trial`` keeps a queued trial's parameters.
#: Internal to Optuna (``Trial`` reads it back as ``_fixed_params``); pinned by a test.
FIXED_PARAMS_KEY = "fixed_params"

#: Where a trial's constraints are kept: ``FrozenTrial.set_constraint`` writes constraint <name> as
#: the system attribute "constraints:<name>", a ``constraints_func`` its list as "constraints".
#: Internal to Optuna (``FrozenTrial.constraints`` reads both back); pinned by a test.
CONSTRAINTS_KEY = "constraints"

#: Where ``optuna.artifacts.upload_artifact`` records an artifact: a system attribute of its trial
#: or study named this prefix + the artifact's id, holding its ``ArtifactMeta`` as JSON.
ARTIFACT_KEY_PREFIX = "artifacts:"
#: How optuna-dashboard deletes an artifact: Optuna cannot delete a system attribute, so the
#: dashboard overwrites the artifact's with JSON null, and lists only the others.
DELETED_ARTIFACT = json.dumps(None)


def claim_trial(storage: BaseStorage, study_id: int) -> int:
    """The id of a trial this process now holds RUNNING: the oldest queued one, else a new one.

    This is the writing half of ``Study.ask`` (its private ``_pop_waiting_trial_id`` followed by
    ``create_new_trial``), rebuilt from public storage calls so that it can be retried alone: a
    whole ``ask`` retried after the database failed between its write and its reads would claim
    a second trial and leave the first RUNNING with no owner.
    """
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, waiting.number)
        try:
            # False when another process moved it to RUNNING first: the database decides who won.
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id
        except UpdateFinishedTrialError:
            continue
    return storage.create_new_trial(study_id)


def trial_handle(
    storage: BaseStorage, study_name: str, trial_id: int, sampler: optuna.samplers.BaseSampler
) -> optuna.Trial:
    """A handle on a claimed RUNNING trial, as ``Study.ask`` returns it; only reads the database.

    A fresh ``Study`` object per handle: ``Study`` caches the trial list per thread between asks
    (and only ``ask`` itself clears that cache), so a long-lived one would show the sampler a
    list without the trial just claimed or those other drivers have told since. The fresh study's
    storage layer (Optuna's ``_CachedStorage``) writes a parameter only for a trial it has
    already read, so the trials are read once before the handle is made.
    """
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    study.get_trials(deepcopy=False)
    return optuna.Trial(study, trial_id)


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial has sampled, plus those it was queued with and has yet to sample.

    A trial stopped between its claim and its sampling knows its queued parameters (a reference,
    a retry) only as Optuna's internal ``fixed_params`` system attribute; retrying it from
    ``trial.params`` alone would turn a reference into a random trial.
    """
    return {**trial.system_attrs.get(FIXED_PARAMS_KEY, {}), **trial.params}


class SamplerView:
    """A study as a sampler sees it: the same study, with its trials passed through ``transform``.

    Optuna's samplers (TPE, NSGA-II, GP) read the trial list through the private
    ``Study._get_trials``, so that is the method this view overrides; everything else is the
    study's own. Only reads go through the view: a sampler's writes (``before_trial``,
    ``after_trial``) get the real study.
    """

    def __init__(self, study: optuna.Study, transform: Callable[[optuna.Study, list[FrozenTrial]], list[FrozenTrial]]):
        self._study, self._transform = study, transform

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        trials = self._transform(self._study, self._study._get_trials(deepcopy=False, use_cache=use_cache))
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def without_constraints(trial: FrozenTrial) -> FrozenTrial:
    """A copy of ``trial`` carrying no constraints. Optuna has no call that removes one, and GP
    fails unless every complete trial it reads carries the same constraints (none, unasked)."""
    shown = copy.copy(trial)
    shown.system_attrs = {
        key: value
        for key, value in trial.system_attrs.items()
        if key != CONSTRAINTS_KEY and not key.startswith(f"{CONSTRAINTS_KEY}:")
    }
    return shown


def note_handle(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A ``Trial`` for optuna-dashboard's ``save_note``, which takes one but only reads its ids.

    Notes are study system attributes, so a finished trial takes one too. ``study`` should carry
    a ``RandomSampler``: the constructor calls the sampler's ``before_trial``, which must not
    act on a trial that is not being sampled.
    """
    return optuna.Trial(study, trial_id)


def attach_artifact(storage: BaseStorage, study_id: int, trial_id: int | None, artifact_id: str, filename: str) -> None:
    """Record an artifact already written to the store, as ``optuna.artifacts.upload_artifact``
    records one. That function records before it writes the file: a retry after a lost reply
    would leave a record without a file. Here the file comes first and the record can be repeated.
    """
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(artifact_id, filename, mimetype or "application/octet-stream", encoding)
    value = json.dumps(dataclasses.asdict(meta))
    if trial_id is None:
        storage.set_study_system_attr(study_id, ARTIFACT_KEY_PREFIX + artifact_id, value)
    else:
        storage.set_trial_system_attr(trial_id, ARTIFACT_KEY_PREFIX + artifact_id, value)


def listed_artifacts(system_attrs: dict[str, Any]) -> list[ArtifactMeta]:
    """The artifacts recorded in a trial's or study's system attributes, deleted ones left out
    (``optuna.artifacts.get_all_artifact_meta`` would fail on those)."""
    return [
        ArtifactMeta(**json.loads(value))
        for key, value in system_attrs.items()
        if key.startswith(ARTIFACT_KEY_PREFIX) and value != DELETED_ARTIFACT
    ]


def forget_study_artifact(storage: BaseStorage, study_id: int, artifact_id: str) -> None:
    """Delete a study artifact's record as optuna-dashboard does (the file is the store's business)."""
    storage.set_study_system_attr(study_id, ARTIFACT_KEY_PREFIX + artifact_id, DELETED_ARTIFACT)
