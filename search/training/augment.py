"""Batched augmentation on the training device: every op works on a whole (B, C, H, W) batch.

Per-sample randomness comes from per-sample parameters (offsets, boxes, masks), never from a
Python loop over the batch. RandAugment draws an op per sample and applies each op once to the
subset of the batch that drew it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from layers import ConfigError, coerce_fields


@dataclass(frozen=True)
class AugmentSpec:
    crop_padding: int = 0  # random crop after zero-padding by this many pixels (a random shift)
    flip: bool = False  # random horizontal flip
    random_resized_crop: bool = False  # scale 0.08-1, ratio 3/4-4/3, resized to the input size
    randaugment_ops: int = 0  # RandAugment: ops per image (0: off)
    randaugment_magnitude: int = 9  # 0..30 scale, as in timm's rand-m9
    random_erasing: float = 0.0  # probability of erasing one random rectangle with noise
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix (0: off); with both on, one is chosen per batch

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0 <= self.randaugment_magnitude <= 30:
            raise ConfigError("randaugment_magnitude", "must be in 0..30")
        for name in ("crop_padding", "randaugment_ops", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError("random_erasing", "is a probability: 0..1")


class BatchAugment:
    """uint8 batches -> normalised float batches (and soft targets), on whatever device they are."""

    def __init__(
        self,
        spec: AugmentSpec,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: tuple[int, int],
        num_classes: int,
        label_smoothing: float,
        device: torch.device | str = "cpu",
    ):
        self.spec, self.size, self.num_classes, self.smoothing = spec, size, num_classes, label_smoothing
        # Made once on the batches' device: a copy per step would be two host-to-device transfers.
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def eval_batch(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The centre crop at the training size, or the whole image resized to ``size``."""
        if size is None or tuple(size) == tuple(self.size):
            return self._normalise(_center_crop(images, self.size))
        return F.interpolate(
            self._normalise(images), size=tuple(size), mode="bilinear", antialias=True, align_corners=False
        )

    def train_batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Augmented images and soft targets (B, classes), label smoothing included."""
        spec = self.spec
        if spec.random_resized_crop:
            images = _random_resized_crop(images, self.size, generator)
        else:
            images = _center_crop(images, self.size)
        if spec.crop_padding:
            images = _random_shift(images, spec.crop_padding, generator)
        if spec.flip:
            images = _random_flip(images, generator)
        if spec.randaugment_ops:
            images = _rand_augment(images, spec.randaugment_ops, spec.randaugment_magnitude, generator)
        x = self._normalise(images)
        if spec.random_erasing:
            x = _random_erase(x, spec.random_erasing, generator)
        targets = F.one_hot(labels, self.num_classes).to(x.dtype)
        targets = targets * (1 - self.smoothing) + self.smoothing / self.num_classes
        if spec.mixup or spec.cutmix:
            x, targets = _mix(x, targets, spec.mixup, spec.cutmix, generator)
        return x, targets

    def _normalise(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    """Uniform draws on the generator's device (the training device: no host round trip)."""
    return torch.rand(n, generator=generator, device=generator.device)


def _center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    height, width = images.shape[-2:]
    if (height, width) == tuple(size):
        return images
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top : top + size[0], left : left + size[1]]


def _random_shift(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Pad by ``pad`` and crop back at a random offset per sample."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=generator.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # (B, W)
    sample = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    flip = _uniform(len(images), generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _random_resized_crop(images: Tensor, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Inception-style crops: area 8-100 %, aspect 3/4-4/3, one box per sample, resized bilinearly."""
    batch, _, height, width = images.shape
    device = images.device
    area = height * width * (0.08 + 0.92 * _uniform(batch, generator))
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * _uniform(batch, generator))
    box_w = torch.sqrt(area * ratio).clamp(max=width)
    box_h = torch.sqrt(area / ratio).clamp(max=height)
    x0 = (width - box_w) * _uniform(batch, generator)
    y0 = (height - box_h) * _uniform(batch, generator)
    boxes = torch.stack([torch.arange(batch, device=device, dtype=x0.dtype), x0, y0, x0 + box_w, y0 + box_h], dim=1)
    crops = roi_align(images.float(), boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops.round().clamp(0, 255).to(torch.uint8)


# RandAugment's ops on uint8 batches; each takes (images, level in [0, 1], signs (B,)).
def _signed(level: float, top: float, signs: Tensor) -> list[float]:
    return (signs * level * top).tolist()


def _per_sample(op, images: Tensor, values: list[float]) -> Tensor:
    # torchvision's ops take one scalar per call; the signs split the batch in two groups at most.
    out = images.clone()
    for value in set(values):
        mask = torch.tensor([v == value for v in values], device=images.device)
        out[mask] = op(images[mask], value)
    return out


_RAND_AUGMENT_OPS = {
    "identity": lambda x, level, signs: x,
    "auto_contrast": lambda x, level, signs: TF.autocontrast(x),
    "equalize": lambda x, level, signs: TF.equalize(x),
    "invert": lambda x, level, signs: TF.invert(x),
    "rotate": lambda x, level, signs: _per_sample(lambda im, v: TF.rotate(im, v), x, _signed(level, 30.0, signs)),
    "posterize": lambda x, level, signs: TF.posterize(x, int(8 - round(level * 4))),
    "solarize": lambda x, level, signs: TF.solarize(x, 255 - level * 255),
    "color": lambda x, level, signs: _per_sample(
        lambda im, v: TF.adjust_saturation(im, 1 + v), x, _signed(level, 0.9, signs)
    ),
    "contrast": lambda x, level, signs: _per_sample(
        lambda im, v: TF.adjust_contrast(im, 1 + v), x, _signed(level, 0.9, signs)
    ),
    "brightness": lambda x, level, signs: _per_sample(
        lambda im, v: TF.adjust_brightness(im, 1 + v), x, _signed(level, 0.9, signs)
    ),
    "sharpness": lambda x, level, signs: _per_sample(
        lambda im, v: TF.adjust_sharpness(im, 1 + v), x, _signed(level, 0.9, signs)
    ),
    "shear_x": lambda x, level, signs: _per_sample(
        lambda im, v: TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=[v, 0.0]),
        x,
        _signed(level, 17.0, signs),
    ),
    "shear_y": lambda x, level, signs: _per_sample(
        lambda im, v: TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, v]),
        x,
        _signed(level, 17.0, signs),
    ),
    "translate_x": lambda x, level, signs: _per_sample(
        lambda im, v: TF.affine(im, angle=0.0, translate=[int(v * im.shape[-1]), 0], scale=1.0, shear=[0.0, 0.0]),
        x,
        _signed(level, 0.45, signs),
    ),
    "translate_y": lambda x, level, signs: _per_sample(
        lambda im, v: TF.affine(im, angle=0.0, translate=[0, int(v * im.shape[-2])], scale=1.0, shear=[0.0, 0.0]),
        x,
        _signed(level, 0.45, signs),
    ),
}


def _rand_augment(images: Tensor, ops: int, magnitude: int, generator: torch.Generator) -> Tensor:
    names = list(_RAND_AUGMENT_OPS)
    level = magnitude / 30.0
    if images.shape[1] == 1:  # colour ops need RGB; grey images skip them
        names = [n for n in names if n not in ("color",)]
    for _ in range(ops):
        choice = torch.randint(len(names), (len(images),), generator=generator, device=generator.device)
        signs = torch.where(_uniform(len(images), generator) < 0.5, -1.0, 1.0)
        out = images.clone()
        for index, name in enumerate(names):
            members = (choice == index).nonzero().flatten()
            if len(members):
                out[members] = _RAND_AUGMENT_OPS[name](images[members], level, signs[members])
        images = out
    return images


def _random_erase(x: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """With ``probability`` per sample, replace a rectangle (2-33 % of the area) with Gaussian noise."""
    batch, _, height, width = x.shape
    device = x.device
    area = height * width * (0.02 + 0.31 * _uniform(batch, generator))
    ratio = torch.exp(math.log(0.3) + math.log(1 / 0.09) * _uniform(batch, generator))
    box_h = torch.sqrt(area * ratio).clamp(1, height).floor()
    box_w = torch.sqrt(area / ratio).clamp(1, width).floor()
    top = ((height - box_h) * _uniform(batch, generator)).floor()
    left = ((width - box_w) * _uniform(batch, generator)).floor()
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    erase = (_uniform(batch, generator) < probability)[:, None, None]
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & erase).unsqueeze(1)
    noise = torch.randn(x.shape, generator=generator, device=generator.device)
    return torch.where(mask, noise, x)


def _mix(x: Tensor, targets: Tensor, mixup: float, cutmix: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Batch-mode mixup or cutmix with the reversed batch (timm's default mode)."""
    draws = _uniform(4, generator).tolist()
    use_cutmix = cutmix > 0 and (mixup <= 0 or draws[0] < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(np.random.default_rng(int(draws[1] * 2**32)).beta(alpha, alpha))
    partner = x.flip(0)
    if use_cutmix:
        height, width = x.shape[-2:]
        cut = (1 - lam) ** 0.5
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = int(draws[2] * height), int(draws[3] * width)
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        x = x.clone()
        x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        x = x * lam + partner * (1 - lam)
    return x, targets * lam + targets.flip(0) * (1 - lam)
