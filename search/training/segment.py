"""The body of a trial, as it runs on a Ray worker: train one architecture over a range of epochs.

A trial runs as a chain of segments, one per early-stopping rung. Each segment is a Ray task
that rebuilds the model, restores the previous segment's checkpoint (passed through Ray's object
store, never through the driver), trains to the next rung and returns its learning curve. A
segment whose worker dies is re-run by Ray from the same checkpoint; failures of the trial itself
(an exception, a NaN loss, running out of memory) come back as a result, not an exception.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

import layers

from .data import DataSpec, load_dataset
from .trainer import NonFiniteLoss, Trainer, TrainSpec, cpu_weights, measure_latency


@dataclass(frozen=True)
class SegmentJob:
    arch: dict[str, Any]
    training: TrainSpec
    data: DataSpec
    seed: int
    start_epoch: int
    stop_epoch: int
    use_gpu: bool
    threads: int
    measure_latency: bool  # the first segment measures inference latency on the trial's device
    return_weights: bool  # the last segment sends the trained weights back


@dataclass
class SegmentResult:
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch run
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0  # training images processed (with repeats): the segment's training compute
    latency_ms: float | None = None
    device: str = ""
    host: str = ""
    weights: dict[str, torch.Tensor] | None = None
    failure: str | None = None  # why the trial failed, if it did
    failure_kind: str | None = None  # exception | nan | oom


def run_segment(job: SegmentJob, checkpoint: dict[str, Any] | None) -> tuple[SegmentResult, dict[str, Any] | None]:
    """Train epochs [start_epoch, stop_epoch); returns the result and the checkpoint to continue from."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, job.threads))
    device = torch.device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
    result = SegmentResult(device=_device_name(device), host=socket.gethostname())
    try:
        data = load_dataset(job.data)
        torch.manual_seed(job.seed)
        arch = layers.ArchConfig.from_dict(job.arch)
        model = layers.create_model(arch)
        trainer = Trainer(model, data, job.training, device, seed=job.seed)
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
        if job.measure_latency:
            result.latency_ms = measure_latency(model, arch.in_chans, arch.img_size, device)
        for _ in range(job.start_epoch, job.stop_epoch):
            result.train_loss.append(trainer.train_epoch())
            result.images += trainer.images_per_epoch
            result.curve.append(trainer.evaluate())
        final = job.stop_epoch >= job.training.epochs
        if final and job.return_weights:
            result.weights = cpu_weights(model)
        next_checkpoint = None if final else _to_cpu(trainer.state_dict())
    except NonFiniteLoss as err:
        result.failure, result.failure_kind, next_checkpoint = str(err), "nan", None
    except torch.OutOfMemoryError as err:
        result.failure, result.failure_kind, next_checkpoint = f"out of memory: {str(err).splitlines()[0]}", "oom", None
    except MemoryError:
        result.failure, result.failure_kind, next_checkpoint = "out of memory (host)", "oom", None
    except Exception as err:  # the trial's own bug or bad configuration: report it, never crash the study
        lines = traceback.format_exception(err)
        result.failure = f"{type(err).__name__}: {err}\n{''.join(lines[-6:])}"
        result.failure_kind, next_checkpoint = "exception", None
    result.seconds = time.perf_counter() - started
    return result, next_checkpoint


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state
