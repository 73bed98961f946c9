"""The driver's one connection to its Optuna study: every read and write goes through ``retry``.

A search runs for hours against a database that may restart under it. Every action here is
retried through an outage for up to two minutes (``storage.with_retries``), and each is safe to
repeat: a trial is claimed and then read back in two steps, attributes are written by trial id,
and telling a told trial is a no-op. Callers never handle database failures themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.artifacts import ArtifactMeta
from optuna.trial import FrozenTrial, TrialState

from . import optuna_adapter, records
from .records import TrialRecord
from .storage import open_storage, with_retries

T = TypeVar("T")
#: The study's own sampler never samples: every trial gets a sampler of its own (see samplers.py).
#: Optuna still calls one when a trial is told or a handle is made, so it is the cheapest there is.
_NOT_SAMPLING = optuna.samplers.RandomSampler()


class StudyClient:
    def __init__(
        self, study: optuna.Study, storage: optuna.storages.BaseStorage, on_retry: Callable[[str], None] | None = None
    ):
        self.study, self.storage, self.on_retry = study, storage, on_retry
        self.name = study.study_name
        self.study_id = storage.get_study_id_from_name(self.name)
        #: Called with a trial's number just before it is told, while the trial still takes
        #: changes: the dashboard's note and artifacts of the trial are written there.
        self.before_tell: Callable[[int], None] | None = None
        self._note_study: optuna.Study | None = None

    @classmethod
    def open(
        cls, name: str, url: str, directions: Sequence[str], on_retry: Callable[[str], None] | None = None
    ) -> tuple[StudyClient, bool]:
        """The study, created if missing, and whether this process created it (several drivers may
        start at once: the database's unique study name decides who was first)."""
        storage = open_storage(url)

        def retry(action: Callable[[], T], what: str) -> T:
            return with_retries(action, what, on_retry=on_retry)

        try:
            study = retry(
                lambda: optuna.create_study(
                    study_name=name, storage=storage, sampler=_NOT_SAMPLING, directions=list(directions)
                ),
                "create the study",
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = retry(
                lambda: optuna.load_study(study_name=name, storage=storage, sampler=_NOT_SAMPLING), "open the study"
            )
            created = False
        return cls(study, storage, on_retry), created

    def retry(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, what, on_retry=self.on_retry)

    # ------------------------------------------------------------------ reads
    def trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self.retry(lambda: self.study.get_trials(deepcopy=False, states=states), "read the trials")

    def records(self) -> list[TrialRecord]:
        return [TrialRecord.from_frozen(t) for t in self.trials()]

    def user_attrs(self) -> dict[str, Any]:
        return self.retry(lambda: self.study.user_attrs, "read the study's attributes")

    def frozen(self, trial_id: int) -> FrozenTrial:
        return self.retry(lambda: self.storage.get_trial(trial_id), "read a trial")

    def artifacts(self, trial_id: int | None = None) -> list[ArtifactMeta]:
        """The artifacts of a trial, or of the study itself."""
        if trial_id is None:
            attrs = self.retry(lambda: self.storage.get_study_system_attrs(self.study_id), "read the artifacts")
        else:
            attrs = self.retry(lambda: self.storage.get_trial_system_attrs(trial_id), "read the artifacts")
        return optuna_adapter.listed_artifacts(attrs)

    def trial_id(self, number: int) -> int:
        return self.retry(
            lambda: self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number), "read a trial"
        )

    # ------------------------------------------------------------------ writes
    def claim(self) -> int:
        """Hold a trial RUNNING (the oldest queued one, else a new one); returns its id."""
        return self.retry(lambda: optuna_adapter.claim_trial(self.storage, self.study_id), "ask for a trial")

    def handle(self, trial_id: int, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Trial:
        """A handle on a claimed trial; ``sampler`` samples its parameters (none needed to write)."""
        return self.retry(
            lambda: optuna_adapter.trial_handle(self.storage, self.name, trial_id, sampler or _NOT_SAMPLING),
            "ask for a trial",
        )

    def sample(
        self,
        trial_id: int,
        make_sampler: Callable[[], optuna.samplers.BaseSampler],
        sample: Callable[[optuna.Trial], T],
    ) -> T:
        """``sample(handle)`` on a claimed trial, with a sampler from ``make_sampler``; every
        suggestion is a database write.

        A retry samples through a fresh handle, which knows the suggestions the database kept (one
        whose reply was lost included), so none is written twice: Optuna refuses a second write.
        It also takes a fresh sampler: the first attempt's has drawn from its generator already,
        and the parameters still to write would come from another state than a run without the
        failure draws them from.
        """
        return self.retry(
            lambda: sample(optuna_adapter.trial_handle(self.storage, self.name, trial_id, make_sampler())),
            "sample a trial",
        )

    def set_trial_attrs(self, trial_id: int, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.retry(
                lambda key=key, value=value: self.storage.set_trial_user_attr(trial_id, key, value), "record a trial"
            )

    def constrain(self, trial_id: int, constraints: dict[str, float]) -> None:
        """Optuna constraints of a trial (feasible when all are <= 0), for samplers that learn them."""
        for key, value in constraints.items():
            self.retry(
                lambda key=key, value=value: self.handle(trial_id).set_constraint(key, value), "record a constraint"
            )

    def set_study_attr(self, key: str, value: Any) -> None:
        self.retry(lambda: self.study.set_user_attr(key, value), "write a study attribute")

    def enqueue(self, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
        self.retry(lambda: self.study.enqueue_trial(params, user_attrs=user_attrs), "enqueue a trial")

    def save_note(self, body: str, trial_id: int | None = None) -> None:
        """optuna-dashboard's Markdown note of a trial, or of the study when ``trial_id`` is None."""
        # Imported at the first note, not with this module: optuna-dashboard brings scikit-learn
        # (about a second), which the commands that only read a study never need.
        import optuna_dashboard

        def save() -> None:
            if trial_id is None:
                optuna_dashboard.save_note(self.study, body)
                return
            if self._note_study is None:
                self._note_study = optuna.load_study(
                    study_name=self.name, storage=self.storage, sampler=optuna.samplers.RandomSampler()
                )
            optuna_dashboard.save_note(optuna_adapter.note_handle(self._note_study, trial_id), body)

        self.retry(save, "write a note")

    def attach_artifact(self, artifact_id: str, filename: str, trial_id: int | None = None) -> None:
        """Record a file already in the artifact store as an artifact of a trial, or of the study."""
        self.retry(
            lambda: optuna_adapter.attach_artifact(self.storage, self.study_id, trial_id, artifact_id, filename),
            "record an artifact",
        )

    def forget_artifact(self, artifact_id: str) -> None:
        self.retry(
            lambda: optuna_adapter.forget_study_artifact(self.storage, self.study_id, artifact_id), "delete an artifact"
        )

    def tell(self, number: int, status: str, values: list[float] | None) -> None:
        if self.before_tell is not None:
            self.before_tell(number)
        self.retry(lambda: records.tell(self.study, number, status, values), "tell a trial")
