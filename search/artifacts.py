"""A study's artifact store: the files optuna-dashboard shows beside a trial or the study.

The store is Optuna's ``FileSystemArtifactStore`` in one folder: ``--artifacts`` on the command
line, else the space's ``study.artifacts``, else ``results/<study>/artifacts/``. Drivers on
several machines share one store when that folder is a shared mount at the same path on each.
The driver records the folder in the study's user attribute ``artifact_store``, so that
``search dashboard`` serves the artifacts of every study in a storage without being told where.

A file is written to the store before it is recorded in the study, so that a database outage
between the two, retried, never leaves a record that points at no file.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts import ArtifactMeta, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from .records import results_dir
from .study_client import StudyClient

#: The study user attribute holding the store's folder (absolute).
STORE_ATTR = "artifact_store"
DEFAULT_FOLDER = "artifacts"


def store_folder(configured: str | None, results: Path, study_name: str) -> Path:
    """The store's folder: the configured one, or ``<results>/<study>/artifacts``."""
    return Path(configured) if configured else results_dir(results, study_name) / DEFAULT_FOLDER


def open_store(folder: Path) -> FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload(client: StudyClient, store: FileSystemArtifactStore, path: Path, trial_id: int | None = None) -> str:
    """Put a file in the store and record it as an artifact of a trial (or the study); its id."""
    artifact_id = str(uuid.uuid4())
    with path.open("rb") as body:
        store.write(artifact_id, body)
    client.attach_artifact(artifact_id, path.name, trial_id)
    return artifact_id


def remove(client: StudyClient, store: FileSystemArtifactStore, meta: ArtifactMeta) -> None:
    """Delete a study artifact: its record first, so that the dashboard never lists a missing file."""
    client.forget_artifact(meta.artifact_id)
    with contextlib.suppress(ArtifactNotFound):  # a store shared with a driver that removed it first
        store.remove(meta.artifact_id)


class StoreUnion:
    """The stores of several studies as one, for a dashboard that serves every study of a storage.

    Artifact ids are UUIDs, so an artifact is read from (or removed from) whichever store holds
    it; a file uploaded through the dashboard goes to the first store.
    """

    def __init__(self, folders: Sequence[Path]):
        self.folders = list(dict.fromkeys(folders))
        self.stores = [FileSystemArtifactStore(folder) for folder in self.folders]

    def open_reader(self, artifact_id: str) -> BinaryIO:
        for store in self.stores:
            with contextlib.suppress(ArtifactNotFound):
                return store.open_reader(artifact_id)
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the studies' stores")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for store in self.stores:
            with contextlib.suppress(ArtifactNotFound):
                return store.remove(artifact_id)
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the studies' stores")


def dashboard_store(chosen: str, recorded: dict[str, str], results: Path) -> StoreUnion:
    """The stores a dashboard serves: the chosen study's first, then every other study's.

    ``recorded`` maps study names to the folder each study recorded; a study that recorded none
    (made before stores were recorded) has its default folder under ``results``.
    """
    names = [chosen, *sorted(set(recorded) - {chosen})]
    return StoreUnion([Path(recorded[n]) if n in recorded else store_folder(None, results, n) for n in names])
