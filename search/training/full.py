"""Full training of one architecture, with a checkpoint every epoch and resume after interruption.

    python -m search train --arch results/export/trial_00012 --epochs 300

``--arch`` is an exported folder (arch.yaml, and training.yaml, data.yaml and
weights.safetensors when present) or an architecture YAML. The model is adapted to the data
set's image size, channels and classes. ``--eval-size`` also evaluates at another resolution: the dynamic weights have a
fixed size whatever the number of tokens, so the same model runs at any input size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import layers

from ..files import replacing
from .data import DataSpec, describe, load_dataset
from .trainer import Trainer, TrainSpec, cpu_weights


@dataclass(frozen=True)
class ArchSource:
    arch: layers.ArchConfig
    recipe: TrainSpec | None  # training.yaml of an exported folder
    weights: Path | None  # weights.safetensors of an exported folder
    data: DataSpec | None  # data.yaml of an exported folder: the search's data set and split


def read_arch(path: str | Path) -> ArchSource:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (expected an exported folder or an architecture YAML)")
    try:
        if not path.is_dir():
            return ArchSource(layers.ArchConfig.load(path), None, None, None)
        if not (path / "arch.yaml").exists():
            raise FileNotFoundError(f"{path} holds no arch.yaml (expected an exported folder)")
        recipe, data, weights = path / "training.yaml", path / "data.yaml", path / "weights.safetensors"
        return ArchSource(
            layers.ArchConfig.load(path / "arch.yaml"),
            TrainSpec.load(recipe) if recipe.exists() else None,
            weights if weights.exists() else None,
            DataSpec.load(data) if data.exists() else None,
        )
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:  # a weights or checkpoint file given where the YAML belongs
        raise ValueError(f"{path}: not a text file (expected an exported folder or an architecture YAML)") from None
    except layers.ConfigError as err:
        raise layers.ConfigError(f"{path}: {err.path}" if err.path else str(path), err.reason) from None


def train_architecture(
    source: ArchSource,
    data_spec: DataSpec,
    training: TrainSpec,
    out: Path,
    *,
    device: torch.device,
    seed: int = 0,
    eval_size: tuple[int, int] | None = None,
    init_weights: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    info = describe(data_spec)
    arch = source.arch.replace(img_size=info.img_size, in_chans=info.in_chans, num_classes=info.num_classes)
    if eval_size is not None:  # checked before training, which would otherwise fail only at its end
        try:
            arch.replace(img_size=eval_size)
        except layers.ConfigError as err:
            raise layers.ConfigError("eval_size", err.reason) from None
    if init_weights and source.weights is None:
        raise FileNotFoundError(
            "init_weights: the architecture has no weights.safetensors to start from "
            "(an exported folder has one for a trial whose weights were kept)"
        )
    start = read_weights(source.weights) if init_weights else None
    run = {
        # a checkpoint holds the generators' states of the device it was written on
        "device": device.type,
        "data": dataclasses.asdict(data_spec),
        "arch": arch.to_dict(),
        "training": dataclasses.asdict(training),
        "seed": seed,
        # what training started from: a run from scratch must not resume one from weights, or back
        "init_weights": None if start is None else hashlib.sha256(source.weights.read_bytes()).hexdigest(),
    }
    checkpoint, metrics_file = out / "checkpoint.pt", out / "metrics.json"
    state = _own_checkpoint(checkpoint, run)
    data = load_dataset(data_spec)  # before anything is written: a bad root leaves no folder behind
    out.mkdir(parents=True, exist_ok=True)
    arch.save(out / "arch.yaml")
    training.save(out / "training.yaml")
    torch.manual_seed(seed)
    model = layers.create_model(arch)
    if start is not None:
        kept = transferable(model, start)
        model.load_state_dict(kept, strict=False)
        fresh = sorted(set(model.state_dict()) - set(kept))
        log(f"started from {source.weights}" + (f"; new for this data set: {', '.join(fresh)}" if fresh else ""))
    trainer = Trainer(model, data, training, device, seed=seed)
    curve: list[float] = []
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        curve = state["curve"]
        log(f"resuming from {checkpoint} after epoch {trainer.epoch}")
    while trainer.epoch < training.epochs:
        loss = trainer.train_epoch()
        curve.append(trainer.evaluate())
        with replacing(checkpoint) as tmp:  # an interruption never leaves half a checkpoint
            torch.save({"run": run, "trainer": trainer.state_dict(), "curve": curve}, tmp)
        log(f"epoch {trainer.epoch}/{training.epochs}: loss {loss:.4f}, validation accuracy {curve[-1]:.4f}")
    metrics: dict[str, Any] = {
        "curve": curve,
        "val_accuracy": curve[-1] if curve else None,
        "img_size": list(arch.img_size),
    }
    if data.test is not None:
        metrics["test_accuracy"] = trainer.evaluate(data.test)
    if eval_size is not None:
        metrics["eval_size"] = list(eval_size)
        metrics["val_accuracy_at_eval_size"] = trainer.evaluate(img_size=eval_size)
    save_file(cpu_weights(model), str(out / "weights.safetensors"))
    metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or one line saying the file is not one (a checkpoint.pt, say)."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a safetensors weights file: {err}") from None


def transferable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights whose shapes fit: another data set changes the stem's channels and the head's classes."""
    own = model.state_dict()
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise ValueError(f"the weights do not belong to this architecture (unexpected: {', '.join(unknown[:3])})")
    return {k: v for k, v in weights.items() if v.shape == own[k].shape}


def _own_checkpoint(path: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None if there is none), refused unless ``run`` left it.

    Only a second run of the same command resumes: a checkpoint that another data set,
    architecture, recipe or seed left in the same folder would often load (the shapes agree) and
    silently stand for this run's training.
    """
    if not path.exists():
        return None
    if not zipfile.is_zipfile(path):  # what torch.save writes: anything else was never a checkpoint
        raise ValueError(f"{path} is damaged or not a checkpoint: delete it to start again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never an arbitrary pickle
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {path}: it holds more than tensors and numbers ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError) as err:  # torch's zip reader on a damaged or foreign file
        raise ValueError(
            f"{path} is damaged or not a checkpoint ({str(err).splitlines()[0]}): delete it to start again"
        ) from None
    differs = [key for key, value in run.items() if state.get("run", {}).get(key) != value]
    if differs:
        raise ValueError(
            f"{path} is another run's: its {', '.join(differs)} differ from this one's "
            "(train into another folder, or delete the checkpoint to start again)"
        )
    return state
