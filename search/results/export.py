"""Export the best architectures: one folder each, ready for timm and for full training.

<out>/trial_00012/arch.yaml            the ArchConfig (timm: dynamic_backbone, arch=...)
                  training.yaml        the recipe the trial was trained with
                  data.yaml            the search's data set and validation split
                  weights.safetensors  the trained weights, when the run kept them
                  README.md            a model card: figures, learning curve, provenance
<out>/exported.yaml                     the trial folders exports of the study wrote here
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import optuna
import yaml

from layers import ArchConfig

from ..records import (
    COMPLETE,
    NORMALIZATION,
    TrialRecord,
    check_writable,
    holds_results_of,
    pareto_front,
    weights_path,
)
from ..space import RecordedSettings
from ..training.data import DataSpec
from ..training.trainer import TrainSpec
from .report import MARKDOWN, describe


class ExportError(ValueError):
    """The selection names no exportable trial."""


def select(
    records: Sequence[TrialRecord],
    directions: Sequence[str],
    *,
    pareto: bool = False,
    top: int | None = None,
    trial: int | None = None,
) -> list[TrialRecord]:
    if trial is not None:
        chosen = [r for r in records if r.number == trial]
        if not chosen:
            raise ExportError(f"no trial {trial} in this study")
        if not chosen[0].arch:
            raise ExportError(f"trial {trial} has no architecture ({chosen[0].status})")
        return chosen
    if top is not None and top < 1:
        raise ExportError(f"--top {top}: K must be at least 1")
    complete = [r for r in records if r.status == COMPLETE and r.values]
    if not complete:
        raise ExportError("the study has no complete trial yet")
    if pareto:
        return pareto_front(records, directions)
    return sorted(complete, key=lambda r: -r.accuracy)[:top]  # the most accurate, whatever the objectives


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What every exported trial of one study shares: read from the study once."""

    study_name: str
    storage_label: str
    space_file: str
    objectives: list[str]
    data: DataSpec  # the search's data set, and the split its trials were validated on
    base_training: TrainSpec  # the space's recipe, before what each trial sampled
    normalization: dict[str, list[float]] | None = None  # the inputs' mean and std, once a trial trained

    @classmethod
    def of(cls, study: optuna.Study, storage_label: str) -> Provenance:
        settings = RecordedSettings.of_study(study.user_attrs)
        return cls(
            study.study_name,
            storage_label,
            study.user_attrs.get("space_file", "?"),
            list(study.metric_names or []),
            settings.data,
            settings.training,
            study.user_attrs.get(NORMALIZATION),
        )


#: The files an export writes into a trial's folder, the only ones it ever removes, and the file
#: in ``--out`` listing the trial folders exports wrote there.
EXPORTED_FILES = ("arch.yaml", "training.yaml", "data.yaml", "weights.safetensors", "README.md")
LEDGER = "exported.yaml"
TRIAL_FOLDER = re.compile(r"trial_\d{5,}")


def export(
    study: optuna.Study,
    chosen: Sequence[TrialRecord],
    out: Path,
    *,
    results: Path,
    storage_label: str,
    replace: bool = False,
) -> list[Path]:
    """Write a folder per chosen trial into ``out``. With ``replace`` (a set: the front, the top K)
    the folders an earlier export of this study wrote there for trials outside the set go, so that
    ``out`` stays the set; without it (one trial) the folder is added to those already there."""
    provenance = Provenance.of(study, storage_label)
    own = holds_results_of(results, study)  # else the weights there are another study's trials'

    folders = [out / f"trial_{record.number:05d}" for record in chosen]
    for folder in folders:  # all checked before any is written: a clash must not leave half an export
        check_writable(folder, "an export folder")
    for record, folder in zip(chosen, folders, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        ArchConfig.from_dict(record.arch).save(folder / "arch.yaml")
        training = dataclasses.replace(provenance.base_training, **record.training)
        training.save(folder / "training.yaml")
        provenance.data.save(folder / "data.yaml")
        weights, kept = weights_path(results, study.study_name, record.number), folder / "weights.safetensors"
        if own and weights.exists():
            shutil.copyfile(weights, kept)
        else:  # an earlier export into this folder left another model's; train and erf would load it
            kept.unlink(missing_ok=True)
        (folder / "README.md").write_text(model_card(provenance, record, training, kept.exists()))
    earlier = _ledger(out, study.study_name)
    written = {f.name for f in folders}
    for name in earlier - written if replace else ():
        _remove_export(out / name)
    (out / LEDGER).write_text(
        yaml.safe_dump({"study": study.study_name, "trials": sorted(written if replace else earlier | written)})
    )
    return folders


def _ledger(out: Path, study_name: str) -> set[str]:
    """The trial folders earlier exports of this study wrote into ``out`` (none of another study's)."""
    path = out / LEDGER
    try:
        ledger = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return set()
    if not isinstance(ledger, dict) or ledger.get("study") != study_name:
        return set()
    return {name for name in ledger.get("trials") or () if isinstance(name, str) and TRIAL_FOLDER.fullmatch(name)}


def _remove_export(folder: Path) -> None:
    """An exported trial folder, its files only: the folder stays where someone put files of their own."""
    for name in EXPORTED_FILES:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _epochs_trained(record: TrialRecord, training: TrainSpec) -> str:
    """The epochs it was trained for: early stopping ends a trial before the recipe's last one."""
    done = len(record.curve)
    return f"{done} epochs" if done == training.epochs else f"{done} of the recipe's {training.epochs} epochs"


def _latency(record: TrialRecord) -> str:
    # a trial rejected before training, or lost before its first segment, measured nothing
    return "not measured" if record.latency_ms is None else f"{record.latency_ms:.3f} ms on {record.device}"


def _wall_time(record: TrialRecord) -> str:
    return "did not train" if not record.curve else f"{record.wall_time_s or 0:.1f} s"


def _load_snippet(normalization: dict[str, list[float]] | None, has_weights: bool) -> str:
    """The timm call that builds the model: with its weights if kept, and with the inputs' mean and
    std, which timm's data config (``timm.data.resolve_data_config``) then gives instead of ImageNet's."""
    overlay = ['"file": "weights.safetensors"'] if has_weights else []
    if normalization is not None:
        overlay += [f'"{key}": {tuple(round(v, 4) for v in normalization[key])!r}' for key in ("mean", "std")]
    arguments = 'arch="arch.yaml"' + (", pretrained=True" if has_weights else "")
    if overlay:
        arguments += ",\n" + " " * 26 + f"pretrained_cfg_overlay={{{', '.join(overlay)}}}"
    return f'model = timm.create_model("dynamic_backbone", {arguments})' + (
        "" if has_weights else "  # weights were not kept"
    )


def _inputs(normalization: dict[str, list[float]] | None) -> str:
    if normalization is None:  # no trial of the study trained: nothing measured the data set
        return "Inputs: pixels on 0..1, normalised with the statistics of the search's data set."
    mean, std = (", ".join(f"{v:.4g}" for v in normalization[key]) for key in ("mean", "std"))
    return f"Inputs: pixels on 0..1, normalised with mean ({mean}) and std ({std}), the search's data set's."


def model_card(provenance: Provenance, record: TrialRecord, training: TrainSpec, has_weights: bool) -> str:
    # a line per objective; an empty line would end the table for a trial with no values
    figures = "".join(f"| {name} | {value:.4g} |\n" for name, value in zip(provenance.objectives, record.values or []))
    curve = "\n".join(f"| {epoch} | {accuracy:.4f} |" for epoch, accuracy in enumerate(record.curve, 1))
    summary = describe(record, MARKDOWN)
    load = _load_snippet(provenance.normalization, has_weights)
    return f"""# Trial {record.number} of study `{provenance.study_name}`

- {summary}

## Figures

| measure | value |
|---|---|
{figures}| parameters | {record.mparams:.4g} M |
| GMACs per image | {record.gmacs:.4g} |
| latency | {_latency(record)} |
| training wall time | {_wall_time(record)} |

## Learning curve (validation accuracy)

| epoch | accuracy |
|---|---|
{curve}

## Use it

{_inputs(provenance.normalization)}

```python
import layers, timm  # importing layers registers the models with timm
{load}
```

Train it at full scale (checkpoints every epoch, resumes when run again) on the search's data
set, validated on the images the search held out (`data.yaml`), or on another with `--dataset`:

```bash
python -m search train --arch trial_{record.number:05d} --epochs 300
```

## Where it comes from

Trial {record.number} of study `{provenance.study_name}` ({provenance.storage_label}),
searched with `{provenance.space_file}` on {provenance.data.name}, {provenance.data.val_fraction:g} of its
training images held out for validation with seed {provenance.data.seed} (`data.yaml`);
trained for {_epochs_trained(record, training)}, batch {training.batch_size}, peak learning rate {training.peak_lr:.3g},
weight decay {training.weight_decay}, label smoothing {training.label_smoothing} (`training.yaml`).
"""
