"""What a trial records, and how it is read back: the one schema for the driver, the live view,
the report and the exports.

Everything a trial learns is written to its Optuna user attributes as soon as it is known, so
that optuna-dashboard shows it and a driver that dies loses nothing: a result written before the
driver could ``tell`` it is told by the next driver instead of being run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .pareto import front

# Values of the "status" attribute.
RUNNING = "running"
COMPLETE = "complete"
PRUNED = "pruned"
FAILED = "failed"  # the trial's own failure (exception, NaN loss, out of memory): counts as done
REJECTED = "rejected"  # over the hard budget or an invalid combination: no compute spent
INTERRUPTED = "interrupted"  # stopped by Ctrl-C: retried by the next run
STALE = "stale"  # left running by a driver that died: retried
SURPLUS = "surplus"  # asked by one of several drivers after the budget was full, or a second retry

COUNTED = (COMPLETE, PRUNED, FAILED)  # what the trial budget counts
RETRIED = (INTERRUPTED, STALE)
FINAL = (*COUNTED, REJECTED)  # the settled outcomes, which every counts line names first

#: How each outcome is told to Optuna. A rejection is PRUNED, not FAIL: it is no crash, and TPE
#: reads constraints (which a rejection carries) from COMPLETE and PRUNED trials only, while
#: COMPLETE would need objective values a trial that never trained does not have.
OPTUNA_STATE = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, REJECTED: TrialState.PRUNED}


@dataclass
class TrialRecord:
    """One trial as the report, the tables and the exports see it."""

    number: int
    state: str  # Optuna's state name
    status: str
    params: dict[str, Any]
    values: list[float] | None
    arch: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    gmacs: float | None = None
    mparams: float | None = None
    latency_ms: float | None = None
    latency_how: str | None = None  # how the latency was measured
    device: str | None = None
    cpu_fallback: bool = False  # asked for a GPU, found none usable, trained on the CPU
    nodes: list[str] = field(default_factory=list)  # Ray node of each run of its segments, in order
    retries: int = 0  # runs of its segments Ray made again (a worker or node lost)
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    wall_time_s: float | None = None
    train_macs: float = 0.0  # training compute spent: 3 x forward MACs per image x images trained on
    compute_s: float = 0.0  # seconds its segments ran on workers
    reason: str | None = None
    reference: str | None = None
    seed: int | None = None
    retry_of: int | None = None

    @property
    def accuracy(self) -> float | None:
        """Final validation accuracy of a complete trial, the best accuracy so far otherwise."""
        if self.status == COMPLETE and self.curve:
            return self.curve[-1]
        return max(self.curve) if self.curve else None

    @property
    def mixer(self) -> str | None:
        return self.arch.get("mixer") if self.arch else None

    @property
    def label(self) -> str:
        """Mixer, plus the predictor for dynamic ones: how plots colour the trials."""
        return label(self.arch) if self.arch else "?"

    @property
    def summary(self) -> str:
        return summary(self.arch) if self.arch else "?"

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        status = attrs.get("status") or _status_of_state(trial.state)
        if status == RUNNING and trial.state.is_finished():
            # Another driver took this trial's driver for dead and failed it as stale (its retry is
            # queued); the stalled driver, woken, wrote "running" between that outcome and the tell.
            status = STALE
        return cls(
            number=trial.number,
            state=trial.state.name,
            status=status,
            params=dict(trial.params),
            values=list(trial.values) if trial.values else attrs.get("values"),
            arch=attrs.get("arch"),
            training=attrs.get("training", {}),
            gmacs=attrs.get("gmacs"),
            mparams=attrs.get("mparams"),
            latency_ms=attrs.get("latency_ms"),
            latency_how=attrs.get("latency_how"),
            device=attrs.get("device"),
            cpu_fallback=attrs.get("cpu_fallback", False),
            nodes=attrs.get("nodes", []),
            retries=attrs.get("retries", 0),
            curve=attrs.get("curve", []),
            train_loss=attrs.get("train_loss", []),
            wall_time_s=attrs.get("wall_time_s"),
            train_macs=attrs.get("train_macs", 0.0),
            compute_s=attrs.get("compute_s", 0.0),
            reason=attrs.get("reason"),
            reference=attrs.get("reference"),
            seed=attrs.get("seed"),
            retry_of=attrs.get("retry_of"),
        )


def label(arch: dict[str, Any]) -> str:
    return f"dynamic/{arch['dynamic']['linear_predictor']}" if arch["mixer"] == "dynamic" else arch["mixer"]


def summary(arch: dict[str, Any]) -> str:
    """One line for tables and the dashboard: label, width, depth and placement."""
    placement = "" if arch["mixer"] == "static" else f", every {arch['every']} from {arch['offset'] % arch['every']}"
    return f"{label(arch)}, width {arch['embed_dim']}, depth {arch['depth']}{placement}"


def _status_of_state(state: TrialState) -> str:
    return {
        TrialState.COMPLETE: COMPLETE,
        TrialState.PRUNED: PRUNED,
        TrialState.FAIL: FAILED,
        TrialState.RUNNING: RUNNING,
        TrialState.WAITING: "waiting",
    }[state]


def directions(study: optuna.Study) -> list[str]:
    """The study's directions as the space writes them: "maximize" / "minimize"."""
    return [d.name.lower() for d in study.directions]


def results_dir(root: Path, study_name: str) -> Path:
    return root / study_name


#: The study attribute holding the input normalisation the trials trained with ({"mean", "std"}):
#: an exported model needs it, and the data set it comes from may be absent where it is exported.
NORMALIZATION = "normalization"

#: The study attribute that tells apart two studies of one name (in two storages), and the file
#: in their results folder, results/<name>/, that says which of them the folder holds.
STUDY_UID, OWNER_FILE = "study_uid", "study.uid"


def results_owner(root: Path, study_name: str) -> str | None:
    """The uid of the study whose results folder this is, None where no run has claimed it yet."""
    path = results_dir(root, study_name) / OWNER_FILE
    return path.read_text().split("\n", 1)[0].strip() if path.is_file() else None


def claim_results(root: Path, study_name: str, uid: str, storage_label: str) -> None:
    folder = results_dir(root, study_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER_FILE).write_text(f"{uid}\nthe results of study {study_name!r} in {storage_label}\n")


def foreign_results(root: Path, study_name: str, uid: str | None) -> str | None:
    """Why results/<name>/ is not the study ``uid``'s (another study of that name claimed it), or None."""
    owner = results_owner(root, study_name)
    if owner is None or owner == uid:
        return None
    folder = results_dir(root, study_name)
    return f"{folder}/ holds the results of another study named {study_name!r} (see its {OWNER_FILE})"


def holds_results_of(root: Path, study: optuna.Study) -> bool:
    """Whether results/<name>/ is this study's: its weights then belong to this study's trials."""
    return foreign_results(root, study.study_name, study.user_attrs.get(STUDY_UID)) is None


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objective names; a study ``search run`` did not make has none, and is read by position."""
    return list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])


class FolderError(RuntimeError):
    """A folder a run would write into (results, artifact store) that cannot be made or written."""


def unwritable_ancestor(folder: Path) -> Path | None:
    """The nearest existing path on the way to ``folder`` (itself included) if it is not a folder
    this user can write into, else None: what makes ``folder.mkdir(parents=True)`` fail."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else existing


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before anything is written, a folder a run would fail to make once it has started."""
    blocking = unwritable_ancestor(folder)
    if blocking is not None:
        raise FolderError(f"cannot make {what} {str(folder)!r}: {blocking} is not a folder this user can write")


def check_writable_file(path: Path, what: str) -> None:
    """Refuse, before any work, a file a command could not write: a folder, or in one it cannot make."""
    if path.is_dir():
        raise FolderError(f"cannot write {what} {str(path)!r}: it is a folder")
    check_writable(path.parent, f"the folder of {what}")


def weights_dir(root: Path, study_name: str) -> Path:
    """Where a run keeps its trials' trained weights (``keep_weights``)."""
    return results_dir(root, study_name) / "weights"


def weights_path(root: Path, study_name: str, number: int) -> Path:
    return weights_dir(root, study_name) / f"trial_{number:05d}.safetensors"


def records(study: optuna.Study) -> list[TrialRecord]:
    return [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]


def status_counts(all_records: Sequence[TrialRecord]) -> dict[str, int]:
    """How many trials have each final status (complete, pruned, failed, rejected)."""
    return _counts(all_records, FINAL)


def unsettled_counts(all_records: Sequence[TrialRecord]) -> dict[str, int]:
    """How many trials have each status that is not final (running, waiting, stale, interrupted, ...)."""
    return _counts(all_records, sorted({r.status for r in all_records} - set(FINAL)))


def _counts(all_records: Sequence[TrialRecord], statuses: Sequence[str]) -> dict[str, int]:
    return {s: sum(r.status == s for r in all_records) for s in statuses}


def counts_line(all_records: Sequence[TrialRecord]) -> str:
    """ "N trials: a complete, b pruned, c failed, d rejected", then any that are not final, so that
    the figures add up to N while a study runs or after a driver stopped."""
    counts = {**status_counts(all_records), **unsettled_counts(all_records)}
    return f"{len(all_records)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def pareto_front(all_records: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """The complete trials no other complete trial dominates, best first objective first."""
    complete = [r for r in all_records if r.status == COMPLETE and r.values]
    chosen = [complete[i] for i in front([r.values for r in complete], directions)]
    return sorted(chosen, key=lambda r: -r.values[0] if directions[0] == "maximize" else r.values[0])


def objective_values(
    objectives: Sequence[str], *, accuracy: float, gmacs: float, mparams: float, latency_ms: float | None
) -> list[float]:
    """A trial's values for the study's objectives, in their order."""
    measures = {"accuracy": accuracy, "gmacs": gmacs, "params": mparams, "latency": latency_ms or 0.0}
    return [measures[name] for name in objectives]


def started(**attrs: Any) -> dict[str, Any]:
    """The attributes that mark a trial as training from now on."""
    return {"status": RUNNING, "started_at": time.time(), **attrs}


def outcome(
    status: str, *, values: list[float] | None = None, reason: str | None = None, **attrs: Any
) -> dict[str, Any]:
    """The final word on a trial, written before it is told so that a crash cannot lose it.

    The status comes last: a driver that dies while writing these leaves the trial unsettled,
    never settled with half its record.
    """
    extra: dict[str, Any] = {"values": values} if values is not None else {}
    if reason is not None:
        extra["reason"] = reason
    return {**attrs, **extra, "status": status}


def tell(study: optuna.Study, number: int, status: str, values: list[float] | None) -> None:
    """Finish a trial in Optuna according to the outcome recorded for it.

    Idempotent, so that it can be retried: the database may have failed after the write.
    """
    if status == COMPLETE:
        study.tell(number, values, skip_if_finished=True)
    else:
        study.tell(number, state=OPTUNA_STATE.get(status, TrialState.FAIL), skip_if_finished=True)
