"""Effective receptive field: how much each input pixel moves the centre output token.

The map is |d out_centre / d input|, summed over channels and averaged over images; the paper
uses it to argue that dynamic layers reach the whole image where a conv stack sees a window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

import layers


def effective_receptive_field(model: layers.DynamicBackbone, images: Tensor) -> Tensor:
    """(H, W) map of mean absolute input gradient of the centre token's features."""
    model.eval()
    images = images.clone().requires_grad_(True)
    features = model.forward_features(images)  # (B, h, w, C)
    centre = features[:, features.shape[1] // 2, features.shape[2] // 2, :]
    centre.sum().backward()
    return images.grad.abs().sum(dim=1).mean(dim=0)


def check_picture_name(path: Path) -> None:
    """Refuse, before the map is computed, a file name whose extension names no picture format."""
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{path}: name a picture file (.png, .jpg, ...) to write the map to")


def save_map(erf: Tensor, path: Path, scale: int = 8) -> None:
    """A log-scaled heat map (dark: no influence, yellow: the most), enlarged ``scale`` times."""
    values = erf.detach().cpu().numpy().astype(np.float64)
    logged = np.log10(values + values.max() * 1e-6 + 1e-30)
    low, high = logged.min(), logged.max()
    level = (logged - low) / (high - low) if high > low else np.zeros_like(logged)
    level[values == 0] = 0.0
    # A black-red-yellow ramp: readable, and zero stays black.
    rgb = np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1), np.zeros_like(level)], axis=-1)
    picture = Image.fromarray((rgb * 255).astype(np.uint8)).resize(
        (values.shape[1] * scale, values.shape[0] * scale), Image.NEAREST
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
