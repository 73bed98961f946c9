"""What optuna-dashboard shows of a study beyond Optuna's own fields, kept current by the driver.

* Before a trial is told (Optuna refuses changes to a finished trial): its note, and its learning
  curve as an image artifact. This runs from ``StudyClient.before_tell``, so a trial told by
  crash recovery or by another driver gets them too.
* At the start of a run, every ``STUDY_NOTE_EVERY_S`` during it, and at its end: the study's note.
* When a run ends: the report and the front's weights as study artifacts, replacing the previous
  report and the weights of trials the front no longer holds.

Notes are written from the stored records (``notes``); files go through the artifact store
(``artifacts``). A store that cannot be written (a full disk) is logged and costs the search
nothing; a database outage is retried like every other write.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import artifacts, notes
from .records import TrialRecord, pareto_front, results_dir, weights_path
from .results.curve import save_curve
from .results.report import build_report
from .storage import masked

if TYPE_CHECKING:
    from .space import SearchSpec
    from .study_client import StudyClient

#: How often a running search rewrites the study's note (its front, its counts).
STUDY_NOTE_EVERY_S = 120.0
REPORT = "report.html"
#: The study artifacts a run manages: the report and front weights (``records.weights_path``'s names).
#: Anything else, such as a file uploaded through the dashboard, is left alone.
WEIGHTS_NAME = re.compile(r"trial_\d+\.safetensors")


def curve_name(number: int) -> str:
    return f"trial_{number:05d}_curve.png"


class DashboardWriter:
    def __init__(self, client: StudyClient, spec: SearchSpec, results: Path, log: Callable[[str], None]):
        self.client, self.spec, self.results, self.log = client, spec, results, log
        self.folder = artifacts.store_folder(spec.study.artifacts, results, spec.study.name).resolve()
        self.store = artifacts.open_store(self.folder)
        self.objectives = [o.name for o in spec.objectives]
        self._noted = 0.0  # when the study note was last written

    # ------------------------------------------------------------------ trials
    def before_tell(self, number: int) -> None:
        """The trial's note and learning-curve image, from what it recorded."""
        trial_id = self.client.trial_id(number)
        frozen = self.client.frozen(trial_id)
        if frozen.state.is_finished():
            return  # told already: this tell is a repeat, and the trial takes no more changes
        record = TrialRecord.from_frozen(frozen)
        self.client.save_note(notes.trial_note(record, self.objectives), trial_id)
        name = curve_name(number)
        if record.curve and all(m.filename != name for m in self.client.artifacts(trial_id)):
            with tempfile.TemporaryDirectory() as folder:
                title = f"trial {number}: {record.status}, {record.summary}"
                self._upload(save_curve(record.curve, record.train_loss, title, Path(folder) / name), trial_id)

    # ------------------------------------------------------------------ the study
    def now_and_then(self) -> None:
        if time.time() - self._noted > STUDY_NOTE_EVERY_S:
            self.write_study_note(self.client.records())

    def write_study_note(self, records: list[TrialRecord]) -> None:
        self.client.save_note(notes.study_note(self.spec, records))
        self._noted = time.time()

    def run_ended(self, publish: bool) -> None:
        """The study note; with ``publish``, the report and the front's weights as study artifacts."""
        records = self.client.records()
        self.write_study_note(records)
        if not publish:
            return
        name = self.spec.study.name
        # The front is the study's, every driver's trials included; each driver uploads the weights
        # it holds, and keeps those that others uploaded for trials still on the front.
        front = [weights_path(self.results, name, r.number) for r in pareto_front(records, self.spec.directions)]
        wanted = {path.name: path for path in front if path.exists()}
        wanted[REPORT] = self.client.retry(
            lambda: build_report(
                self.client.study,
                results_dir(self.results, name) / REPORT,
                storage_label=masked(self.spec.study.storage),
            ),
            "write the report",
        )
        existing = [m for m in self.client.artifacts() if m.filename == REPORT or WEIGHTS_NAME.fullmatch(m.filename)]
        on_front = {path.name for path in front}
        stale = [m for m in existing if m.filename == REPORT or m.filename not in on_front]
        kept = {m.filename for m in existing} - {m.filename for m in stale}
        uploaded = set()
        for filename, path in wanted.items():
            if filename not in kept and self._upload(path):
                uploaded.add(filename)
        for meta in stale:  # after the uploads, so that the dashboard always lists a report
            if meta.filename == REPORT and REPORT not in uploaded:
                continue  # the new report could not be stored: the previous one stays listed
            try:
                artifacts.remove(self.client, self.store, meta)
            except OSError as err:
                self.log(f"could not remove {meta.filename} from the artifact store {self.folder}: {err}")

    def _upload(self, path: Path, trial_id: int | None = None) -> bool:
        """Whether ``path`` is now an artifact (of the trial, or of the study)."""
        try:
            artifacts.upload(self.client, self.store, path, trial_id)
        except OSError as err:
            self.log(f"could not put {path.name} in the artifact store {self.folder}: {err}")
            return False
        return True
