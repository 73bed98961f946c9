"""What the dashboard shows, piece by piece and without a server: the notes' text for every kind of
trial, the learning-curve image, a dashboard's view of several studies' artifact stores, and the
study artifacts a run leaves when it ends."""

from __future__ import annotations

import io
import math
from pathlib import Path

import optuna
import pytest
from conftest import write_space
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

import search.dashboard as dashboard_module
from search import artifacts
from search.artifacts import StoreUnion, dashboard_store
from search.dashboard import REPORT, DashboardWriter
from search.notes import NOTE_CURVE_COLUMNS, study_note, trial_note
from search.records import COMPLETE, FAILED, INTERRUPTED, PRUNED, REJECTED, TrialRecord, weights_path
from search.results.curve import ACCURACY, LOSS, MARGIN, SIZE, draw_curve
from search.space import load_space
from search.study_client import StudyClient

SPACE = load_space(Path(__file__).resolve().parent.parent / "spaces" / "dynamic.yaml")
OBJECTIVES = ["accuracy", "gmacs"]
ARCH = {
    "mixer": "dynamic",
    "embed_dim": 48,
    "depth": 4,
    "every": 2,
    "offset": 1,
    "dynamic": {"linear_predictor": "bilateral"},
}


def record(number, status, curve=(), values=None, reason=None, **extra) -> TrialRecord:
    return TrialRecord(
        number=number,
        state="COMPLETE" if status == COMPLETE else "PRUNED",
        status=status,
        params={},
        values=values,
        arch=ARCH,
        curve=list(curve),
        train_loss=[2.0 / (i + 1) for i in range(len(curve))],
        gmacs=0.0012,
        mparams=0.21,
        latency_ms=1.5 if curve else None,
        device="cpu (2 cores, 1 threads)" if curve else None,
        train_macs=3e12 if curve else 0.0,
        reason=reason,
        **extra,
    )


def test_a_complete_trials_note_gives_its_architecture_figures_and_curve():
    note = trial_note(record(7, COMPLETE, [0.3, 0.5, 0.61], [0.61, 0.0012], reference="weightformer"), OBJECTIVES)
    assert note.startswith("### Trial 7: Complete\n")
    assert "**dynamic/bilateral, width 48, depth 4, every 2 from 1** (reference trial `weightformer`)" in note
    assert "accuracy **0.61**, gmacs **0.0012**" in note
    assert "| 0.0012 | 0.21 M | 1.5 ms | cpu (2 cores, 1 threads) | 3 | 3e+12 MACs |" in note
    assert "| epoch | 1 | 2 | 3 |" in note and "| validation accuracy | 0.300 | 0.500 | 0.610 |" in note
    assert "Why" not in note


def test_a_rejection_reads_as_one_and_not_as_a_failure():
    note = trial_note(record(3, REJECTED, reason="over budget: 0.0051 GMACs > max_gmacs 0.004"), OBJECTIVES)
    assert note.startswith("### Trial 3: Rejected before training, not a failure\n")
    assert "**Why:** over budget: 0.0051 GMACs > max_gmacs 0.004" in note
    assert "No compute was spent" in note and "Pruned" in note
    assert "Learning curve" not in note  # it never trained


def test_a_stopped_or_failed_trial_says_why_in_its_own_words():
    pruned = trial_note(record(4, PRUNED, [0.2, 0.25, 0.3], reason="stopped at epoch 3 by trial 1"), OBJECTIVES)
    assert "### Trial 4: Stopped early (pruned)" in pruned and "**Why:** stopped at epoch 3 by trial 1" in pruned
    assert "Learning curve" in pruned
    failed = trial_note(record(5, FAILED, [0.1], reason="exception: ValueError('x')\nline 2"), OBJECTIVES)
    assert "### Trial 5: Failed" in failed and "```\nexception: ValueError('x')\nline 2\n```" in failed
    interrupted = trial_note(record(6, INTERRUPTED, [0.1], reason="interrupted", retry_of=2), OBJECTIVES)
    assert "to be run again" in interrupted and "(a re-run of trial 2)" in interrupted
    assert "queued again as a new trial" in interrupted


def test_a_long_curve_is_shown_at_evenly_spaced_epochs_with_the_last():
    curve = [i / 300 for i in range(300)]
    table = trial_note(record(1, COMPLETE, curve, [curve[-1], 0.0012]), OBJECTIVES).split("| epoch |")[1]
    epochs = table.splitlines()[0].strip(" |").split(" | ")
    assert len(epochs) == NOTE_CURVE_COLUMNS and epochs[0] == "1" and epochs[-1] == "300"


def test_the_study_note_describes_space_budget_sampler_references_and_front():
    records = [
        record(0, COMPLETE, [0.5, 0.8], [0.8, 0.0012], reference="weightformer"),
        record(1, PRUNED, [0.2], reason="stopped at epoch 3 by trial 0", reference="attention"),
        record(2, REJECTED, reason="over budget: 0.0051 GMACs > max_gmacs 0.004"),
    ]
    note = study_note(SPACE, records)
    for fragment in (
        "## Study `dynamic-digit-pairs`",
        "Space file `dynamic.yaml`; data `digit-pairs`",
        "3 trials: 1 complete, 1 pruned, 0 failed, 1 rejected",
        "| dynamic.linear_predictor | gap, linear, nonlinear, bilateral, deep when mixer in ['dynamic'] |",
        "| training.lr | 0.002 to 0.006 (log) |",
        "Fixed: patch_size = 4, num_heads = 2.",
        "| budget | max_gmacs 0.004, max_params 400000 |",
        "| sampler | tpe, n_startup_trials 6 |",
        "| early stopping | rungs (4, 7), reduction 2, min_trials 4 |",
        "| weightformer | 0 | complete | 0.800 |",
        "| attention | 1 | pruned | 0.200 | 0.0012 | 1 | stopped at epoch 3 by trial 0 |",
        "### Pareto front (1 trials)",
        "| 0 | dynamic/bilateral, width 48, depth 4, every 2 from 1 [weightformer] | 0.8 | 0.0012 |",
    ):
        assert fragment in note, fragment


def test_the_learning_curve_image_draws_both_curves():
    image = draw_curve([0.2, 0.5, 0.7], [2.0, 1.2, 0.8], "trial 1: complete")
    assert image.size == SIZE
    colours = {colour for _, colour in image.getcolors(maxcolors=SIZE[0] * SIZE[1])}
    assert ACCURACY in colours and LOSS in colours
    # Values that blew up are left out, not drawn as lines along the axes; the loss axis scales to
    # the finite values, so the last loss sits at its top.
    blown = draw_curve([0.2, math.nan], [math.inf, 1.0], "trial 2: failed")
    left, right, middle = MARGIN[0], SIZE[0] - MARGIN[2], SIZE[1] // 2
    assert blown.getpixel((left, middle)) != ACCURACY and blown.getpixel((right, middle)) != LOSS
    assert blown.getpixel((right, MARGIN[1])) == LOSS


def test_a_dashboard_reads_each_studys_artifacts_from_its_own_store(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    FileSystemArtifactStore(tmp_path / "b").write("in-b", io.BytesIO(b"weights"))
    union = StoreUnion([tmp_path / "a", tmp_path / "b"])
    assert union.open_reader("in-b").read() == b"weights"
    union.write("uploaded", io.BytesIO(b"x"))  # an upload through the dashboard goes to the first
    assert (tmp_path / "a" / "uploaded").exists()
    union.remove("in-b")
    with pytest.raises(ArtifactNotFound):
        union.open_reader("in-b")


def test_a_dashboard_serves_the_chosen_study_first_and_defaults_an_unrecorded_store(tmp_path):
    union = dashboard_store("new", {"old": "/shared/old", "other": "/shared/other"}, tmp_path)
    assert union.folders == [tmp_path / "new" / "artifacts", Path("/shared/old"), Path("/shared/other")]


@pytest.fixture
def writer(tmp_path, monkeypatch) -> tuple[DashboardWriter, list[str]]:
    """A driver's dashboard writer on a study of two complete trials, both on the front (a report
    stub stands for the real one), and the lines it logs."""
    spec = load_space(write_space(tmp_path))
    client, _ = StudyClient.open(spec.study.name, spec.study.storage, spec.directions)
    for values in ([0.5, 0.1], [0.6, 0.2]):
        client.study.add_trial(optuna.trial.create_trial(values=values))

    def report(study, path: Path, **kwargs) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("report")
        return path

    monkeypatch.setattr(dashboard_module, "build_report", report)
    logged: list[str] = []
    return DashboardWriter(client, spec, tmp_path / "results", logged.append), logged


def study_artifacts(writer: DashboardWriter) -> list[str]:
    return sorted(m.filename for m in writer.client.artifacts())


def hold_weights(folder: Path, number: int) -> Path:
    path = weights_path(folder, "tiny", number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_a_run_that_ends_keeps_the_front_weights_another_driver_stored(writer, tmp_path):
    writer, _ = writer
    artifacts.upload(writer.client, writer.store, hold_weights(tmp_path / "other-driver", 1))
    hold_weights(writer.results, 0)
    writer.run_ended(publish=True)
    assert study_artifacts(writer) == [REPORT, "trial_00000.safetensors", "trial_00001.safetensors"]


def test_a_report_the_store_cannot_take_leaves_the_previous_one_listed(writer, monkeypatch):
    writer, logged = writer
    writer.run_ended(publish=True)
    before = [m.artifact_id for m in writer.client.artifacts() if m.filename == REPORT]

    def full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(artifacts, "upload", full)
    writer.run_ended(publish=True)
    assert [m.artifact_id for m in writer.client.artifacts() if m.filename == REPORT] == before
    assert logged[-1].startswith(f"could not put {REPORT} in the artifact store")


def test_weights_the_store_cannot_delete_cost_the_run_nothing(writer, monkeypatch):
    writer, logged = writer
    hold_weights(writer.results, 0)
    writer.run_ended(publish=True)
    writer.client.study.add_trial(optuna.trial.create_trial(values=[0.7, 0.05]))  # trial 0 leaves the front

    def refuse(artifact_id: str) -> None:
        raise PermissionError("read-only store")

    monkeypatch.setattr(writer.store, "remove", refuse)
    writer.run_ended(publish=True)
    assert "trial_00000.safetensors" not in study_artifacts(writer)
    assert (
        f"could not remove trial_00000.safetensors from the artifact store {writer.folder}: read-only store" in logged
    )


def test_the_counts_of_a_study_add_up_while_trials_run():
    """A study with a running trial read "1 trials: 0 complete, 0 pruned, 0 failed, 0 rejected"."""
    from search.records import RUNNING, counts_line

    line = counts_line([record(0, COMPLETE, [0.5], [0.5, 0.001]), record(1, RUNNING), record(2, INTERRUPTED)])
    assert line == "3 trials: 1 complete, 0 pruned, 0 failed, 0 rejected, 1 interrupted, 1 running"
