"""Pins every Optuna behaviour beyond the public API that ``search/optuna_adapter.py`` relies on.

An Optuna upgrade that changes one of them fails here, by name, instead of in a running search.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search import optuna_adapter
from search.storage import open_storage


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'adapter.db'}"


@pytest.fixture
def study(url) -> optuna.Study:
    return optuna.create_study(study_name="pins", storage=open_storage(url), directions=["maximize", "minimize"])


@pytest.fixture
def ids(url, study) -> tuple[optuna.storages.BaseStorage, int]:
    """A second connection to the study's database, as another process would have, and the study's id."""
    storage = open_storage(url, create=False)
    return storage, storage.get_study_id_from_name(study.study_name)


def test_enqueued_parameters_live_in_the_fixed_params_system_attribute(study):
    study.enqueue_trial({"mixer": "static"})
    assert study.trials[0].system_attrs[optuna_adapter.FIXED_PARAMS_KEY] == {"mixer": "static"}


def test_constraints_live_in_system_attributes_a_copy_can_leave_out():
    trial = optuna.trial.create_trial(params={}, distributions={}, values=[1.0])
    trial.set_constraint("max_gmacs", 2.0)
    assert set(trial.system_attrs) == {f"{optuna_adapter.CONSTRAINTS_KEY}:max_gmacs"}
    shown = optuna_adapter.without_constraints(trial)
    assert shown.constraints == {} and trial.constraints == {"max_gmacs": 2.0}


def test_a_trial_handle_suggests_its_queued_parameters(study, ids):
    """``Trial`` reads its fixed parameters from that attribute: a claimed reference stays itself."""
    study.enqueue_trial({"mixer": "static"})
    storage, study_id = ids
    handle = optuna_adapter.trial_handle(
        storage, study.study_name, optuna_adapter.claim_trial(storage, study_id), optuna.samplers.RandomSampler(seed=0)
    )
    assert handle.suggest_categorical("mixer", ["dynamic", "static", "attention"]) == "static"


def test_queued_params_merge_what_was_queued_and_what_was_sampled(study):
    study.enqueue_trial({"mixer": "static"})
    trial = study.ask({"depth": optuna.distributions.IntDistribution(2, 4)})
    assert optuna_adapter.queued_params(study.trials[trial.number]) == {
        "mixer": "static",
        "depth": trial.params["depth"],
    }


def test_a_claim_takes_the_oldest_queued_trial_then_creates_new_ones(study, ids):
    study.enqueue_trial({"mixer": "static"})
    study.enqueue_trial({"mixer": "attention"})
    storage, study_id = ids
    claimed = [storage.get_trial_number_from_id(optuna_adapter.claim_trial(storage, study_id)) for _ in range(3)]
    assert claimed == [0, 1, 2]
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 3


def test_a_queued_trial_another_process_took_is_not_claimed_again(study, ids):
    study.enqueue_trial({"mixer": "static"})
    study.ask()  # another process pops the queued trial first
    storage, study_id = ids
    assert storage.get_trial_number_from_id(optuna_adapter.claim_trial(storage, study_id)) == 1


def test_a_handle_shows_the_sampler_the_trial_just_claimed(study, ids):
    """A long-lived ``Study`` caches its trial list between asks; each handle gets a fresh one."""
    seen: list[int] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen.append(len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))))
            return super().sample_independent(study, trial, name, distribution)

    storage, study_id = ids
    for expected in (1, 2):
        handle = optuna_adapter.trial_handle(
            storage, study.study_name, optuna_adapter.claim_trial(storage, study_id), Spy(seed=0)
        )
        handle.suggest_categorical("mixer", ["dynamic", "static"])
        assert seen[-1] == expected
    assert isinstance(handle.distributions["mixer"], CategoricalDistribution)


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp"])
def test_samplers_read_the_trials_through_get_trials(name, monkeypatch):
    """``SamplerView`` overrides ``Study._get_trials``: if a sampler read trials another way, it
    would bypass the view, and early-stopped trials would silently count as worthless again."""
    from search import samplers

    seen: list[int] = []
    monkeypatch.setattr(samplers, "seen_by_sampler", lambda study, trials: seen.append(len(trials)) or trials)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for x in (0.1, 0.4, 0.7, 0.9):
        study.enqueue_trial({"x": x})
        trial = study.ask()
        study.tell(trial, [trial.suggest_float("x", 0.0, 1.0), 1.0])
    options = {"tpe": {"n_startup_trials": 2}, "gp": {"n_startup_trials": 2}, "nsga2": {"population_size": 2}}
    study.sampler = samplers.create_sampler(name, 0, options[name])
    study.ask().suggest_float("x", 0.0, 1.0)
    assert seen and max(seen) == 5  # the four told trials and the one being sampled, all through the view


# ---------------------------------------------------------------------- optuna-dashboard's notes and artifacts
def test_a_note_handle_takes_a_note_on_a_finished_trial(study, ids):
    """Notes live in study system attributes, which a finished trial does not freeze."""
    from optuna_dashboard import get_note, save_note

    trial = study.ask()
    study.tell(trial, state=TrialState.PRUNED)
    storage, study_id = ids
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    plain = optuna.load_study(study_name=study.study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    save_note(optuna_adapter.note_handle(plain, trial_id), "**rejected**")
    assert get_note(optuna_adapter.note_handle(plain, trial_id)) == "**rejected**"


@pytest.mark.parametrize("on_trial", [True, False])
def test_an_attached_artifact_is_one_optuna_and_the_dashboard_list_and_download(study, ids, tmp_path, on_trial):
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
    from optuna_dashboard.artifact._backend import list_study_artifacts, list_trial_artifacts

    storage, study_id = ids
    store = FileSystemArtifactStore(tmp_path)
    (tmp_path / "curve-file").write_bytes(b"png bytes")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
    optuna_adapter.attach_artifact(storage, study_id, trial_id if on_trial else None, "curve-file", "c.png")
    frozen = storage.get_trial(trial_id)
    meta = get_all_artifact_meta(frozen, storage=storage) if on_trial else get_all_artifact_meta(study)
    assert [(m.artifact_id, m.filename, m.mimetype) for m in meta] == [("curve-file", "c.png", "image/png")]
    study_attrs = storage.get_study_system_attrs(study_id)
    if on_trial:
        listed = list_trial_artifacts(study_attrs, storage.get_trial_system_attrs(trial_id), frozen)
        assert optuna_adapter.listed_artifacts(storage.get_trial_system_attrs(trial_id)) == meta
    else:
        listed = list_study_artifacts(study_attrs)
        assert optuna_adapter.listed_artifacts(study_attrs) == meta
    assert [m["filename"] for m in listed] == ["c.png"]
    download_artifact(artifact_store=store, artifact_id="curve-file", file_path=str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == b"png bytes"


def test_a_forgotten_study_artifact_is_listed_by_neither(study, ids):
    from optuna_dashboard.artifact._backend import list_study_artifacts

    storage, study_id = ids
    for artifact_id in ("old", "new"):
        optuna_adapter.attach_artifact(storage, study_id, None, artifact_id, "report.html")
    optuna_adapter.forget_study_artifact(storage, study_id, "old")
    attrs = storage.get_study_system_attrs(study_id)
    assert [m["artifact_id"] for m in list_study_artifacts(attrs)] == ["new"]
    assert [m.artifact_id for m in optuna_adapter.listed_artifacts(attrs)] == ["new"]
