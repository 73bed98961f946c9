"""The search end to end: a real local Ray, real SQLite and PostgreSQL, the real command line.

Two searches train for real; the checks of orchestration alone (resume, failures, budget,
seeding, objectives) run a trial body that trains nothing (``tests/fakes.py``)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import TINY_SPACE, counted, fake_search, load_study, sqlite_url, write_space
from test_data import write_imagefolder

from search.cli import main
from search.records import COMPLETE, FAILED, PRUNED, REJECTED, TrialRecord
from search.records import records as read_records

pytestmark = pytest.mark.usefixtures("session_ray")


def statuses(study: optuna.Study) -> list[str]:
    return [TrialRecord.from_frozen(t).status for t in study.trials]


def run_cli(space: Path, tmp_path: Path, *extra: str) -> int:
    return main(["run", "--space", str(space), "--results", str(tmp_path / "results"), "--quiet", *extra])


def check_three_trial_study(study: optuna.Study, results: Path) -> None:
    records = read_records(study)
    assert len(counted(records)) == 3
    # The references come first, in order: the paper's design and its two baselines.
    assert [r.reference for r in records[:3]] == ["weightformer", "attention", "static"]
    assert [r.mixer for r in records[:3]] == ["dynamic", "attention", "static"]
    for record in counted(records):
        assert record.status in (COMPLETE, PRUNED)
        assert record.arch["img_size"] == [8, 8] and record.arch["num_classes"] == 10
        assert record.gmacs > 0 and record.mparams > 0
        assert record.latency_ms > 0 and record.device.startswith("cpu")
        assert len(record.curve) == 2 and all(0 <= a <= 1 for a in record.curve)
        assert record.wall_time_s > 0
    complete = [r for r in counted(records) if r.status == COMPLETE]
    assert complete
    for record in complete:
        trial = study.trials[record.number]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [record.curve[-1], record.gmacs]
    assert study.metric_names == ["accuracy", "gmacs"]
    assert "digits" in study.user_attrs["space"]
    kept = sorted(p.name for p in (results / "tiny" / "weights").iterdir())
    assert kept  # the front's weights are kept


def test_three_trial_search_on_local_ray_with_sqlite(tmp_path):
    space = write_space(tmp_path)
    assert run_cli(space, tmp_path) == 0
    check_three_trial_study(load_study(sqlite_url(tmp_path)), tmp_path / "results")


def test_three_trial_search_on_postgresql(tmp_path, postgres_url, unique_name):
    space = write_space(tmp_path, study={"name": "tiny", "storage": postgres_url})
    study_name = f"tiny-{unique_name}"
    space.write_text(space.read_text().replace("name: tiny", f"name: {study_name}"))
    assert run_cli(space, tmp_path) == 0
    study = load_study(postgres_url, study_name)
    (tmp_path / "results" / "tiny").symlink_to(tmp_path / "results" / study_name)
    check_three_trial_study(study, tmp_path / "results")


def test_running_again_resumes_and_counts_what_is_done(tmp_path):
    space = write_space(tmp_path, trials={"count": 2, "parallel": 1})
    fake_search(space, tmp_path / "results")
    url = sqlite_url(tmp_path)

    def finished() -> list[dict]:
        return [t.params for t in load_study(url).trials if t.state.is_finished()]

    first = finished()
    assert len(first) == 2
    fake_search(space, tmp_path / "results")  # the budget is already spent: nothing new
    assert finished() == first
    space.write_text(space.read_text().replace("count: 2", "count: 4"))
    fake_search(space, tmp_path / "results")
    study = load_study(url)
    assert [t.params for t in study.trials[:2]] == first
    assert statuses(study).count(COMPLETE) + statuses(study).count(PRUNED) == 4


def test_a_failing_trial_does_not_stop_the_study(tmp_path):
    # A learning rate of 1e9 makes the static model's loss NaN in its first steps (in tests/fakes.py too).
    space = write_space(
        tmp_path,
        trials={"count": 4, "parallel": 2},
        space={
            "patch_size": 2,
            "num_heads": 2,
            "mixer": {"choices": ["dynamic", "attention", "static"]},
            "embed_dim": {"choices": [16, 32]},
            "training.lr": {"value": 1.0e9, "when": {"mixer": "static"}},
        },
    )
    fake_search(space, tmp_path / "results")
    study = load_study(sqlite_url(tmp_path))
    records = read_records(study)
    failed = [r for r in records if r.status == FAILED]
    assert failed and all(r.mixer == "static" and r.reason.startswith("nan: non-finite training loss") for r in failed)
    assert len(counted(records)) == 4
    assert any(r.status == COMPLETE for r in records)


def test_configurations_over_budget_are_rejected_before_training(tmp_path):
    space = write_space(
        tmp_path,
        budget={"max_gmacs": 0.00012},
        trials={"count": 3, "parallel": 2},
        space={
            "patch_size": 2,
            "num_heads": 2,
            "mixer": {"choices": ["static", "attention"]},
            "embed_dim": {"choices": [16, 64]},
            "depth": {"low": 2, "high": 3},
        },
    )
    fake_search(space, tmp_path / "results")
    records = read_records(load_study(sqlite_url(tmp_path)))
    rejected = [r for r in records if r.status == REJECTED]
    assert rejected
    for record in rejected:
        assert record.reason.startswith("over budget:") and "max_gmacs" in record.reason
        assert record.gmacs > 0.00012
        assert record.curve == [] and record.latency_ms is None  # nothing was trained or timed
    assert len(counted(records)) == 3
    assert all(r.gmacs <= 0.00012 for r in counted(records))


def test_seeded_runs_try_the_same_configurations(tmp_path):
    runs = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        space = write_space(
            folder,
            trials={"count": 12, "parallel": 2},
            training={"epochs": 4},
            early_stopping={"min_epochs": 1, "min_trials": 2},
            sampler={"name": "tpe", "options": {"n_startup_trials": 4}},
        )
        fake_search(space, folder / "results")
        runs.append([(t.params, TrialRecord.from_frozen(t).status) for t in load_study(sqlite_url(folder)).trials])
    assert runs[0] == runs[1]
    assert len({str(p) for p, _ in runs[0]}) > 4  # not one configuration over and over
    assert {s for _, s in runs[0]} >= {COMPLETE, PRUNED}  # timing could have changed the decisions too


def test_a_study_with_other_objectives_is_not_mixed_up(tmp_path, capsys):
    space = write_space(tmp_path, trials={"count": 1, "parallel": 1}, training={"epochs": 1})
    fake_search(space, tmp_path / "results")
    other = write_space(
        tmp_path,
        trials={"count": 1, "parallel": 1},
        training={"epochs": 1},
        objectives={"accuracy": "maximize", "params": "minimize"},
    )
    assert run_cli(other, tmp_path) == 2
    assert "was created with objectives ['accuracy', 'gmacs']" in capsys.readouterr().err


def test_a_study_is_not_resumed_with_another_recipe(tmp_path, capsys):
    """Resumed with other epochs, a study mixed trials of two recipes, and its report and exports
    gave the earlier trials the new one (a trial records only what it sampled)."""
    space = write_space(tmp_path, trials={"count": 1, "parallel": 1}, training={"epochs": 1})
    fake_search(space, tmp_path / "results")
    space.write_text(space.read_text().replace("epochs: 1", "epochs: 3"))
    assert run_cli(space, tmp_path) == 2
    assert "was searched with another recipe (training.epochs: 1 -> 3)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "changed, said",
    [
        ({"mixer": {"choices": ["dynamic", "attention"]}}, "mixer: choices ['dynamic', 'attention', 'static'] -> "),
        # a range turned into choices, or put on a log scale, crashed in Optuna at the first sample
        ({"depth": {"choices": [2, 3]}}, "depth: a linear integer range -> choices [2, 3]"),
        ({"depth": {"low": 2, "high": 3, "log": True}}, "depth: a linear integer range -> a log-scale integer range"),
    ],
)
def test_a_study_is_not_resumed_with_other_sampling(tmp_path, capsys, changed, said):
    """Optuna refuses a categorical parameter's new choices, and a range's new kind or scale: every
    later run crashed in a traceback, leaving a trial running and a retry queued that crashed the
    next run the same way."""
    space = write_space(tmp_path, trials={"count": 1, "parallel": 1}, training={"epochs": 1})
    fake_search(space, tmp_path / "results")
    write_space(tmp_path, trials={"count": 2, "parallel": 1}, training={"epochs": 1}, space={**TINY_SPACE, **changed})
    assert run_cli(space, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"was sampled otherwise ({said}" in err, err


def test_a_moved_data_folder_does_not_block_resuming(tmp_path):
    """data.root was compared with the recipe: a data set moved, or mounted elsewhere, was refused."""
    from search.driver import Driver
    from search.space import load_space

    folder = tmp_path / "images"
    write_imagefolder(folder)
    data = {"name": "imagefolder", "root": str(folder), "img_size": 8, "val_fraction": 0.25}
    space = write_space(tmp_path, data=data)
    Driver(load_space(space), results=tmp_path / "results").open()  # creates the study, records the space
    folder.rename(tmp_path / "moved")
    write_space(tmp_path, data={**data, "root": str(tmp_path / "moved")})
    Driver(load_space(space), results=tmp_path / "results").open()  # refused before


def test_rungs_follow_each_trials_own_epochs(tmp_path):
    """With the epochs sampled, each trial stops at the rungs of its own count, not the base's."""
    from dataclasses import replace

    from search.driver import Active, Driver
    from search.space import load_space

    spec = load_space(write_space(tmp_path, training={"epochs": 10}, early_stopping={"min_epochs": 1, "reduction": 2}))
    driver = Driver(spec, results=tmp_path / "results")

    def stops(epochs: int) -> list[int]:
        active = Active(trial_id=0, number=0, params={}, seed=0, training=replace(spec.training, epochs=epochs))
        out: list[int] = []
        while active.epochs_done < epochs:
            out.append(driver.next_stop(active))
            active.curve = [0.0] * out[-1]
        return out

    assert stops(10) == [1, 2, 4, 8, 10]
    assert stops(5) == [1, 2, 4, 5]
    assert stops(12) == [1, 2, 4, 8, 12]


def test_two_studies_of_one_name_never_share_a_results_folder(tmp_path, capsys):
    """In two storages, they shared results/<name>/weights/: the second run's clean-up deleted the
    first's weights and wrote over others, and an export then gave a trial another model's."""
    from search.driver import StudyMismatch
    from search.records import weights_path

    results = tmp_path / "results"
    spaces = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        spaces.append(write_space(tmp_path / name, trials={"count": 1, "parallel": 1}, training={"epochs": 1}))
    fake_search(spaces[0], results)
    with pytest.raises(StudyMismatch, match="holds the results of another study named 'tiny'"):
        fake_search(spaces[1], results)
    fake_search(spaces[0], results)  # its own folder: it resumes
    fake_search(spaces[1], tmp_path / "elsewhere")
    theirs = weights_path(results, "tiny", 0)
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_bytes(b"the first study's trial 0")
    out = tmp_path / "export"
    study = ["--study", "tiny", "--storage", sqlite_url(tmp_path / "b"), "--results", str(results)]
    capsys.readouterr()
    assert main(["export", *study, "--trial", "0", "--out", str(out)]) == 0
    assert not (out / "trial_00000" / "weights.safetensors").exists()
    assert "(no weights: another study of this name keeps its own under" in capsys.readouterr().out
    for command in (["report"], ["results"]):  # they wrote over the first study's report and table
        assert main([*command, *study]) == 2
        assert "holds the results of another study named 'tiny'" in capsys.readouterr().err


def test_drivers_giving_a_study_its_uid_at_once_claim_its_results_folder_alike(tmp_path, monkeypatch):
    """Two drivers opening a study made before studies had a uid both wrote one: the first claimed
    the folder with its own and the second, reading back the other, was refused its own study's
    results folder."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from search.driver import Driver
    from search.records import STUDY_UID, results_owner
    from search.space import load_space
    from search.study_client import StudyClient

    both_found_none = threading.Barrier(2, timeout=30)
    set_attr = StudyClient.set_study_attr

    def meeting_first(client, key, value):
        if key == STUDY_UID and both_found_none.wait() == 1:
            time.sleep(0.2)  # the second writes its uid after the first has written its own
        set_attr(client, key, value)

    monkeypatch.setattr(StudyClient, "set_study_attr", meeting_first)
    space = load_space(write_space(tmp_path))
    optuna.create_study(study_name="tiny", storage=sqlite_url(tmp_path), directions=["maximize", "minimize"])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda d: d.open(), [Driver(space, results=tmp_path / "results") for _ in range(2)]))
    assert results_owner(tmp_path / "results", "tiny") == load_study(sqlite_url(tmp_path)).user_attrs[STUDY_UID]
