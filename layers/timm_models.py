"""timm registration: the three WeightFormer presets and one generic entry for any ArchConfig.

import layers, timm
timm.create_model("weightformer_tiny", num_classes=10)
timm.create_model("dynamic_backbone", arch="arch.yaml", img_size=64)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, register_model

from .backbone import DynamicBackbone
from .config import ArchConfig
from .presets import PRESETS

# timm arguments that map onto config fields; everything else goes to timm's builder.
_CONFIG_KWARGS = ("num_classes", "img_size", "in_chans", "drop_path_rate")


def _build(cfg: ArchConfig, num_classes: int, in_chans: int) -> DynamicBackbone:
    # timm's builder passes the classes and channels back from the pretrained config, where
    # _create put the config's own; pretrained loading reads them from the same place.
    return DynamicBackbone(cfg.replace(num_classes=num_classes, in_chans=in_chans))


def _create(variant: str, arch: ArchConfig, pretrained: bool, **kwargs: Any) -> DynamicBackbone:
    overrides = {name: kwargs.pop(name) for name in _CONFIG_KWARGS if name in kwargs}
    cfg = arch.replace(**overrides)
    kwargs.pop("pretrained_cfg", None)
    pretrained_cfg = {
        "url": "",
        "num_classes": cfg.num_classes,
        "input_size": (cfg.in_chans, *cfg.img_size),
        "fixed_input_size": False,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "first_conv": "patch_embed",
        "classifier": "head",
    }
    return build_model_with_cfg(_build, variant, pretrained, pretrained_cfg=pretrained_cfg, model_cfg=cfg, **kwargs)


@register_model
def weightformer_tiny(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_tiny", PRESETS["weightformer_tiny"], pretrained, **kwargs)


@register_model
def weightformer_small(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_small", PRESETS["weightformer_small"], pretrained, **kwargs)


@register_model
def weightformer_base(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_base", PRESETS["weightformer_base"], pretrained, **kwargs)


@register_model
def dynamic_backbone(
    pretrained: bool = False, arch: ArchConfig | Mapping[str, Any] | str | Path | None = None, **kwargs: Any
) -> DynamicBackbone:
    """Any architecture of the space: ``arch`` is an ArchConfig, a mapping, or a YAML/JSON path."""
    if arch is None:
        raise TypeError("dynamic_backbone needs arch=<ArchConfig | dict | path to a YAML file>")
    return _create("dynamic_backbone", ArchConfig.coerce(arch), pretrained, **kwargs)
