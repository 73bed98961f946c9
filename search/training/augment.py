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

from layers import ConfigError, coerce_fields

#: RandAugment's magnitude runs over timm's levels (``rand-m9``: 9 of 10), where each op reaches its
#: strongest effect; torchvision's RandAugment counts 31 bins instead, a third as strong at 9.
MAX_MAGNITUDE = 10


@dataclass(frozen=True)
class AugmentSpec:
    crop_padding: int = 0  # random crop after zero-padding by this many pixels (a random shift)
    flip: bool = False  # random horizontal flip
    random_resized_crop: bool = False  # scale 0.08-1, ratio 3/4-4/3, resized to the input size
    randaugment_ops: int = 0  # RandAugment: ops per image (0: off)
    randaugment_magnitude: int = 9  # 0..10, timm's levels: 9 is rand-m9 (rotations up to 27 degrees)
    random_erasing: float = 0.0  # probability of erasing one random rectangle with noise
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix (0: off); with both on, one is chosen per batch

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise ConfigError("randaugment_magnitude", f"must be in 0..{MAX_MAGNITUDE} (timm's levels)")
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
        """The centre crop at the training size; at another ``size``, the same view at that size.

        Images stored with a margin around the training crop (ImageFolder: size / 0.875) are
        resized by size / training size and then centre-cropped, so that only the resolution
        changes: resizing the whole stored image would also widen the field of view.
        """
        if size is None or tuple(size) == tuple(self.size):
            return self._normalise(_center_crop(images, self.size))
        stored = [round(side * new / old) for side, new, old in zip(images.shape[-2:], size, self.size)]
        resized = F.interpolate(
            self._normalise(images), size=stored, mode="bilinear", antialias=True, align_corners=False
        )
        return _center_crop(resized, tuple(size))

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
    # Imported here: torchvision brings torch._dynamo (about a second), which only this crop needs.
    from torchvision.ops import roi_align

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


# ---------------------------------------------------------------------- RandAugment
#: torchvision's RandAugment ops (and magnitudes), plus invert. Each is of one of three kinds, and
#: each kind is applied to the whole batch at once with per-sample parameters, a sample that drew
#: an op of another kind getting that kind's identity:
#:   lookups (identity, auto_contrast, equalize, invert, posterize, solarize): a 256-entry table
#:       per sample and channel, then one gather;
#:   blends (color, contrast, brightness, sharpness): x + (f - 1)(x - d) for a per-sample factor f
#:       and a degenerate image d (grey, mean grey, black, blurred);
#:   warps (rotate, shear_x, shear_y, translate_x, translate_y): one affine map per sample.
#: Nothing is read back to the host, so the device never waits for the CPU (tests/test_train.py
#: runs the ops on meta tensors, which refuse any such read).
RAND_AUGMENT_OPS = (
    "identity",
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
COLOUR_OPS = ("color",)  # need RGB: grey images skip them
_BLENDS = ("color", "contrast", "brightness", "sharpness")
_WARPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
# Strongest effect of each op (at the top magnitude): degrees, factor offsets, fractions of the size.
_MAX_ROTATE, _MAX_FACTOR, _MAX_SHEAR, _MAX_TRANSLATE = 30.0, 0.9, 17.0, 0.45
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def _rand_augment(images: Tensor, ops: int, magnitude: int, generator: torch.Generator) -> Tensor:
    names = tuple(n for n in RAND_AUGMENT_OPS if images.shape[1] == 3 or n not in COLOUR_OPS)
    for _ in range(ops):
        choice = torch.randint(len(names), (len(images),), generator=generator, device=generator.device)
        signs = torch.where(_uniform(len(images), generator) < 0.5, -1.0, 1.0)
        images = apply_ops(images, choice, signs, magnitude / MAX_MAGNITUDE, names)
    return images


def apply_ops(images: Tensor, choice: Tensor, signs: Tensor, level: float, names: tuple[str, ...]) -> Tensor:
    """Sample i of uint8 ``images`` (B, C, H, W) gets op ``names[choice[i]]`` at ``level`` (0..1),
    in direction ``signs[i]`` (+-1) for the ops that have one."""

    def drew(*ops: str) -> Tensor:  # (B,) whether each sample drew one of ``ops``
        picked = torch.zeros_like(choice, dtype=torch.bool)
        for op in ops:
            if op in names:
                picked |= choice == names.index(op)
        return picked

    images = _lookup(images, drew, level)
    images = torch.where(drew(*_BLENDS)[:, None, None, None], _blend(images, drew, signs, level), images)
    return torch.where(drew(*_WARPS)[:, None, None, None], _warp(images, drew, signs, level), images)


def _lookup(images: Tensor, drew, level: float) -> Tensor:
    """The point ops, as one table (B, C, 256) per sample and channel."""
    batch, channels = images.shape[:2]
    flat = images.reshape(batch, channels, -1).long()  # (B, C, HW)
    values = torch.arange(256, device=images.device)
    table = values.expand(batch, channels, 256)
    shift = round(level * 4)  # posterize keeps 8 - shift bits
    threshold = 255 - level * 255
    for op, op_table in (
        ("invert", 255 - values),
        ("posterize", (values >> shift) << shift),
        ("solarize", torch.where(values >= threshold, 255 - values, values)),
        ("auto_contrast", _auto_contrast_table(flat, values)),
        ("equalize", _equalize_table(flat, values)),
    ):
        table = torch.where(drew(op)[:, None, None], op_table, table)
    return table.gather(2, flat).reshape(images.shape).to(torch.uint8)


def _auto_contrast_table(flat: Tensor, values: Tensor) -> Tensor:
    """Stretch each channel's range to 0..255 (unchanged when it holds one value)."""
    low, high = flat.amin(-1, keepdim=True).float(), flat.amax(-1, keepdim=True).float()
    scale = 255 / (high - low).clamp(min=1)
    stretched = ((values - low) * scale).clamp(0, 255).long()
    return torch.where(high > low, stretched, values)


def _equalize_table(flat: Tensor, values: Tensor) -> Tensor:
    """PIL's histogram equalisation per channel (unchanged when one value fills all but a few pixels)."""
    histogram = torch.zeros(*flat.shape[:2], 256, dtype=torch.long, device=flat.device)
    histogram.scatter_add_(2, flat, torch.ones_like(flat))
    top_count = histogram.gather(2, flat.amax(-1, keepdim=True))  # pixels at the highest value present
    step = (flat.shape[-1] - top_count) // 255
    below = histogram.cumsum(-1) - histogram  # pixels strictly below each value
    equalised = ((below + step // 2) // step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, equalised, values)


def _blend(images: Tensor, drew, signs: Tensor, level: float) -> Tensor:
    x = images.float()
    grey = x if x.shape[1] == 1 else sum(w * x[:, c : c + 1] for c, w in enumerate(_GREY_WEIGHTS)).floor()
    # PIL's smoothing kernel: the 3 x 3 neighbourhood with the centre weighted 5, over 13. As a
    # box sum it avoids a 3-group convolution, which is slow on the CPU (40 ms at CIFAR batch 256).
    blurred = ((F.avg_pool2d(x, 3, stride=1, padding=1) * 9 + 4 * x) / 13).round()
    edge = torch.ones_like(x[:1, :1], dtype=torch.bool)
    edge[..., 1:-1, 1:-1] = False  # PIL keeps the border pixels as they are
    blurred = torch.where(edge, x, blurred)
    degenerate = torch.where(
        drew("brightness")[:, None, None, None],
        0.0,
        torch.where(
            drew("color")[:, None, None, None],
            grey,
            torch.where(drew("contrast")[:, None, None, None], grey.mean((1, 2, 3), keepdim=True), blurred),
        ),
    )
    factor = (1 + signs * level * _MAX_FACTOR).view(-1, 1, 1, 1)
    return (degenerate + factor * (x - degenerate)).clamp(0, 255).to(torch.uint8)


def _warp(images: Tensor, drew, signs: Tensor, level: float) -> Tensor:
    """Rotations, shears and translations about the centre, nearest pixel, zero fill."""
    batch, _, height, width = images.shape
    device = images.device
    # Each output pixel reads the input at A p + b (p relative to the centre, in pixels).
    angle = torch.deg2rad(signs * level * _MAX_ROTATE)
    shear = torch.tan(torch.deg2rad(signs * level * _MAX_SHEAR))
    matrix = torch.eye(2, device=device).repeat(batch, 1, 1)
    rotation = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], 1).view(-1, 2, 2)
    matrix = torch.where(drew("rotate")[:, None, None], rotation, matrix)
    matrix[:, 0, 1] = torch.where(drew("shear_x"), shear, matrix[:, 0, 1])
    matrix[:, 1, 0] = torch.where(drew("shear_y"), shear, matrix[:, 1, 0])
    shift_x = drew("translate_x") * torch.trunc(signs * level * _MAX_TRANSLATE * width)
    shift_y = drew("translate_y") * torch.trunc(signs * level * _MAX_TRANSLATE * height)
    # The same map in grid_sample's coordinates, -1..1 across the image on each axis. (Built from
    # Python numbers: a tensor made from host data would be a copy the host waits for.)
    theta = torch.stack(
        [
            torch.stack([matrix[:, 0, 0], matrix[:, 0, 1] * height / width, -2 * shift_x / width], 1),
            torch.stack([matrix[:, 1, 0] * width / height, matrix[:, 1, 1], -2 * shift_y / height], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.to(torch.uint8)


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
