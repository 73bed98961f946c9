"""The body of a trial, as it runs on a Ray worker: train one architecture over a range of epochs.

A trial runs as a chain of segments, one per early-stopping rung. Each segment is a Ray task
that rebuilds the model, restores the previous segment's checkpoint (passed through Ray's object
store, never through the driver), trains to the next rung and returns its learning curve. A
segment whose worker dies is re-run by Ray from the same checkpoint; failures of the trial itself
(an exception, a NaN loss, running out of memory, no usable GPU, no data) come back as a result,
not an exception.

Nothing here imports Ray: the same body runs in a plain process (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

import layers

from .data import DataError, Dataset, DataSpec, describe, load_dataset
from .device import NoUsableGpu, claim_memory, device_name, place, release
from .trainer import NonFiniteLoss, Trainer, TrainSpec, cpu_weights, latency_method, measure_latency


@dataclass(frozen=True)
class SegmentJob:
    arch: dict[str, Any]
    training: TrainSpec
    data: DataSpec
    seed: int
    start_epoch: int
    stop_epoch: int
    gpus: float  # the trial's share of a GPU (0: the CPU; below 1: it shares one)
    threads: int
    measure_latency: bool  # the first segment measures inference latency on the trial's device
    return_weights: bool  # the last segment sends the trained weights back
    allow_cpu_fallback: bool = False  # with no usable GPU, train on the CPU rather than fail


@dataclass
class SegmentResult:
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch run
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0  # training images processed (with repeats): the segment's training compute
    latency_ms: float | None = None
    latency_how: str | None = None  # how the latency was measured
    device: str = ""
    cpu_fallback: str | None = None  # why a trial that asked for a GPU trained on the CPU
    host: str = ""
    weights: dict[str, torch.Tensor] | None = None
    mean: tuple[float, ...] | None = None  # the data set's input normalisation, per channel on 0..1
    std: tuple[float, ...] | None = None
    failure: str | None = None  # why the trial failed, if it did
    failure_kind: str | None = None  # exception | nan | oom | no_gpu | data


def run_segment(
    job: SegmentJob, checkpoint: dict[str, Any] | None, data: Dataset | None = None
) -> tuple[SegmentResult, dict[str, Any] | None]:
    """Train epochs [start_epoch, stop_epoch); returns the result and the checkpoint to continue from.

    ``data`` is the data set when the driver ships it (through Ray's object store); without it
    the segment loads ``job.data`` itself, which for file-based data sets needs ``data.root`` here.
    """
    started = time.perf_counter()
    torch.set_num_threads(max(1, job.threads))
    result = SegmentResult(host=socket.gethostname())
    device, next_checkpoint = None, None
    try:
        placement = place(job.gpus, job.allow_cpu_fallback, result.host)
        device = placement.device
        result.device, result.cpu_fallback = device_name(device), placement.cpu_fallback
        claim_memory(device, job.gpus)
        if data is None:
            data = load_dataset(job.data)
        elif not data.in_memory:
            describe(job.data)  # streamed: its files must be here at data.root, or the reason why not
        result.mean, result.std = data.mean, data.std
        next_checkpoint = _train(job, checkpoint, data, device, result)
    except NoUsableGpu as err:
        result.failure, result.failure_kind = str(err), "no_gpu"
    except DataError as err:
        result.failure, result.failure_kind = f"{err} (on {result.host})", "data"
    except NonFiniteLoss as err:
        result.failure, result.failure_kind = str(err), "nan"
    except torch.OutOfMemoryError as err:
        result.failure, result.failure_kind = f"out of memory: {str(err).splitlines()[0]}", "oom"
    except MemoryError:
        result.failure, result.failure_kind = "out of memory (host)", "oom"
    except Exception as err:  # the trial's own bug or bad configuration: report it, never crash the study
        lines = traceback.format_exception(err)
        result.failure = f"{type(err).__name__}: {err}\n{''.join(lines[-6:])}"
        result.failure_kind = "exception"
    release(device)  # the model and optimizer went with _train's frame
    result.seconds = time.perf_counter() - started
    return result, next_checkpoint


def _train(
    job: SegmentJob, checkpoint: dict[str, Any] | None, data: Dataset, device: torch.device, result: SegmentResult
) -> dict[str, Any] | None:
    torch.manual_seed(job.seed)
    arch = layers.ArchConfig.from_dict(job.arch)
    model = layers.create_model(arch)
    trainer = Trainer(model, data, job.training, device, seed=job.seed, workers=job.threads)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    if job.measure_latency:
        result.latency_ms = measure_latency(model, arch.in_chans, arch.img_size, device, trainer.autocast_dtype)
        result.latency_how = latency_method(result.device, trainer.autocast_dtype, job.gpus)
    for _ in range(job.start_epoch, job.stop_epoch):
        result.train_loss.append(trainer.train_epoch())
        result.images += trainer.images_per_epoch
        result.curve.append(trainer.evaluate())
    if job.stop_epoch < job.training.epochs:
        return _to_cpu(trainer.state_dict())
    if job.return_weights:
        result.weights = cpu_weights(model)
    return None


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state
