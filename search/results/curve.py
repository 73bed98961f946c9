"""A trial's learning curve as a small PNG, drawn with Pillow: no browser and no plotting stack at run
time, since the driver draws one for every trial it tells (optuna-dashboard shows it on the trial's
page, where multi-objective studies have no intermediate values to plot).

Validation accuracy (blue, left axis, 0 to 1) and training loss (orange, right axis, 0 to its
largest value) against epochs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (480, 280)
MARGIN = (48, 34, 52, 34)  # left, top, right, bottom: room for the axes' labels
FONT_SIZE = 12
ACCURACY, LOSS, GRID, INK = (31, 119, 180), (255, 127, 14), (225, 225, 225), (40, 40, 40)
ACCURACY_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_EPOCH_LABELS = 8
MAX_EPOCHS_MARKED = 40  # beyond this, a dot per epoch would hide the line


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)  # Pillow's own font: nothing to find on the system


def draw_curve(accuracy: Sequence[float], train_loss: Sequence[float], title: str) -> Image.Image:
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    epochs = max(len(accuracy), len(train_loss), 1)

    def x(epoch: int) -> float:  # epochs count from 1; a single epoch sits in the middle
        return (left + right) / 2 if epochs == 1 else left + (epoch - 1) / (epochs - 1) * (right - left)

    def y(fraction: float) -> float:
        return bottom - min(max(fraction, 0.0), 1.0) * (bottom - top)

    for tick in ACCURACY_TICKS:
        draw.line([(left, y(tick)), (right, y(tick))], fill=GRID)
        draw.text((left - 6, y(tick)), f"{tick:g}", fill=ACCURACY, font=font, anchor="rm")
    loss_top = max((v for v in train_loss if math.isfinite(v)), default=0.0) or 1.0
    for tick in (0.0, 0.5, 1.0):
        draw.text((right + 6, y(tick)), f"{tick * loss_top:.3g}", fill=LOSS, font=font, anchor="lm")
    step = max(1, -(-epochs // MAX_EPOCH_LABELS))  # ceil: at most MAX_EPOCH_LABELS labels
    for epoch in sorted({*range(1, epochs + 1, step), epochs}):
        draw.line([(x(epoch), bottom), (x(epoch), bottom + 4)], fill=INK)
        draw.text((x(epoch), bottom + 6), str(epoch), fill=INK, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text(((left + right) / 2, SIZE[1] - 2), "epoch", fill=INK, font=font, anchor="mb")
    for values, scale, color in ((train_loss, loss_top, LOSS), (accuracy, 1.0, ACCURACY)):
        # A non-finite value (a loss that blew up) has no place on the axes: the line skips it.
        points = [(x(epoch), y(value / scale)) for epoch, value in enumerate(values, 1) if math.isfinite(value)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points if len(points) <= MAX_EPOCHS_MARKED else ():
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    draw.text((left, 4), title, fill=INK, font=font)
    draw.text((left, 18), "validation accuracy", fill=ACCURACY, font=font)
    draw.text((right, 18), "training loss", fill=LOSS, font=font, anchor="ra")
    return image


def save_curve(accuracy: Sequence[float], train_loss: Sequence[float], title: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_curve(accuracy, train_loss, title).save(path)
    return path
