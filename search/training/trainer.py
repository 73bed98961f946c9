"""Training one architecture: AdamW, linear warm-up then cosine decay, label smoothing, AMP on GPU.

All hyperparameters live in ``TrainSpec``. A ``Trainer`` runs any range of epochs and can be
checkpointed between them, which is how the search trains a trial rung by rung and how full
training resumes after an interruption.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layers import ConfigError, coerce_fields, load_yaml, save_yaml

from .augment import AugmentSpec, BatchAugment
from .data import Dataset, Split, StreamingSplit
from .device import autocast_dtype, rng_state, set_rng_state

#: Latency: untimed forwards first (allocation, kernel selection), then the timed ones.
LATENCY_WARMUP, LATENCY_REPEATS = 10, 50


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    lr_reference_batch: int | None = None  # if set, lr scales as lr * batch_size / lr_reference_batch
    weight_decay: float = 0.05  # AdamW; biases, norms and gates are not decayed
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    label_smoothing: float = 0.1
    grad_clip: float | None = None  # max global gradient norm
    amp: bool = True  # mixed precision on GPU (bf16 where supported, else fp16 with loss scaling)
    eval_batch_size: int = 512
    augment: AugmentSpec = field(default_factory=AugmentSpec)

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio", "label_smoothing"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
        if self.lr <= 0:
            raise ConfigError("lr", "must be positive")
        if self.label_smoothing >= 1:
            raise ConfigError("label_smoothing", "must be below 1")
        # A negative max norm would flip every gradient (clip_grad_norm_ scales by it), and a
        # reference batch below 1 a learning rate's sign or size: refused, not trained with.
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("grad_clip", "must be positive (or null for no clipping)")
        if self.lr_reference_batch is not None and self.lr_reference_batch < 1:
            raise ConfigError("lr_reference_batch", "must be at least 1 (or null for no scaling)")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr_reference_batch is None else self.lr * self.batch_size / self.lr_reference_batch

    def save(self, path: Path) -> None:
        """Write the recipe as YAML (``training.yaml`` of an export or a training run)."""
        save_yaml(self, path)

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        return load_yaml(cls, path, "training")


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups: no decay for biases and other 1-d parameters (norms, gates).

    The groups, their order and their keys are those of timm's ``create_optimizer_v2(model,
    "adamw", ...)``, which the recipes were tuned with, so checkpoints' optimizer states keep
    loading. Built here because importing timm costs a fresh worker process half a second (beyond
    torch._dynamo, which any torch optimizer imports), and each GPU segment runs in a fresh process.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            excluded = not weight_decay or param.ndim <= 1 or name.endswith(".bias")
            (no_decay if excluded else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}] if no_decay else []
    return groups + ([{"params": decay, "weight_decay": weight_decay}] if decay else [])


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial fails, the study goes on."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        spec: TrainSpec,
        device: torch.device,
        seed: int,
        workers: int = min(4, os.cpu_count() or 1),
    ):
        """``workers``: decoding processes of data sets that stream from disk (the trial's CPUs)."""
        self.model = model.to(device)
        self.spec, self.device, self.workers = spec, device, workers
        self.train_split, self.val_split = data.train.to(device, workers), data.val.to(device, workers)
        self.augment = BatchAugment(
            spec.augment, data.mean, data.std, data.img_size, data.num_classes, spec.label_smoothing, device
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        groups = weight_decay_groups(model, spec.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=spec.peak_lr, weight_decay=0.0)
        self.steps_per_epoch = max(1, len(self.train_split) // spec.batch_size)
        self.images_per_epoch = min(len(self.train_split), self.steps_per_epoch * spec.batch_size)
        total = spec.epochs * self.steps_per_epoch
        warmup = round(spec.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _warmup_cosine(step, warmup, total, spec.min_lr_ratio)
        )
        self.autocast_dtype = autocast_dtype(device) if spec.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.epoch = 0

    def train_epoch(self) -> float:
        """One pass over the training split; returns the mean training loss."""
        self.model.train()
        losses = []
        for images, labels in self.train_split.batches(
            self.spec.batch_size, self.device, self.generator, drop_last=True
        ):
            x, targets = self.augment.train_batch(images, labels, self.generator)
            with torch.autocast(
                self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
            ):
                loss = F.cross_entropy(self.model(x), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.spec.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(loss.detach())
        self.epoch += 1
        # Checked once per epoch, not per step: a per-step check would stall the GPU on every
        # batch, and a NaN, once in the weights, keeps every later loss NaN until the epoch ends.
        mean = float(torch.stack(losses).mean()) if losses else float("nan")
        if losses and not math.isfinite(mean):
            raise NonFiniteLoss(f"non-finite training loss ({mean}) in epoch {self.epoch}")
        return mean

    @torch.no_grad()
    def evaluate(self, split: Split | StreamingSplit | None = None, img_size: tuple[int, int] | None = None) -> float:
        """Top-1 accuracy (0..1) on ``split`` (default: the validation split)."""
        self.model.eval()
        split = self.val_split if split is None else split.to(self.device, self.workers)
        correct = 0
        for images, labels in split.batches(self.spec.eval_batch_size, self.device):
            with torch.autocast(
                self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
            ):
                logits = self.model(self.augment.eval_batch(images, img_size))
            correct += int((logits.argmax(dim=1) == labels).sum())
        return correct / len(split)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(self.device),  # drop-path masks: a resumed run draws what a straight one would
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())  # set_state takes a CPU tensor, even for CUDA
        if "rng" in state:  # checkpoints written before the default generators were kept have none
            set_rng_state(state["rng"], self.device)
        self.epoch = state["epoch"]


def cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as contiguous CPU tensors, as safetensors writes them."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def measure_latency(
    model: nn.Module,
    in_chans: int,
    img_size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype | None,
    batch: int = 1,
    repeats: int = LATENCY_REPEATS,
) -> float:
    """Milliseconds of one inference forward of ``batch`` images, in the precision the model trains in.

    The fastest of ``repeats`` timed forwards, not the median: on a GPU shared with another trial
    the neighbour's kernels can only delay a forward, never speed it up, so the fastest of enough
    repeats is one the neighbour did not touch, and what the model takes on the GPU alone.
    """
    model.eval()
    x = torch.randn(batch, in_chans, *img_size, generator=torch.Generator().manual_seed(0)).to(device)
    timings = []
    with torch.no_grad(), torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
        for i in range(LATENCY_WARMUP + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= LATENCY_WARMUP:
                timings.append(time.perf_counter() - start)
    return 1000 * min(timings)


def latency_method(device_name: str, dtype: torch.dtype | None, gpus: float, batch: int = 1) -> str:
    """How ``measure_latency`` measured, for the trial's record."""
    precision = f"{str(dtype).removeprefix('torch.')} autocast" if dtype is not None else "float32"
    share = f" (its {gpus:g} share of the GPU)" if 0 < gpus < 1 else ""
    return (
        f"batch {batch}, {precision}, fastest of {LATENCY_REPEATS} forwards after {LATENCY_WARMUP} warm-up, "
        f"on {device_name}{share}"
    )
