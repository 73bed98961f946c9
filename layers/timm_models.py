"""timm registration: the three WeightFormer presets and one generic entry for any ArchConfig.

import layers, timm
timm.create_model("weightformer_tiny", num_classes=10)
timm.create_model("dynamic_backbone", arch="arch.yaml", img_size=64)

Importing ``layers`` registers these with timm without importing timm: if timm is already imported
they are registered at once, otherwise right after timm's own import finishes, whichever comes
first. Importing timm pulls in torchvision and torch._dynamo, about 2 s per process, which the
search's driver and its fake-trial workers never use.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Mapping
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .backbone import DynamicBackbone
from .config import ArchConfig
from .presets import PRESETS

# timm arguments that map onto config fields and are applied before the build. The classes and
# channels are not among them: timm's builder passes them to _build, and its weight loading
# compares them with the pretrained config's to refit the head and the stem.
_CONFIG_KWARGS = ("img_size", "drop_path_rate")
#: timm's generic model arguments (its train.py passes some on every call) and the values that
#: leave these models as they are; another value asks for a part these models do not have.
_NEUTRAL_KWARGS = {
    "drop_rate": (0, 0.0),
    "drop_block_rate": (0, 0.0),
    "global_pool": ("avg",),
}


def _build(
    cfg: ArchConfig,
    num_classes: int,
    in_chans: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **generic: Any,
) -> DynamicBackbone:
    from timm.layers import is_scriptable

    # timm takes scriptable/exportable/no_jit itself and builds under them; export works on these
    # models and they use no jit, but the data-dependent shapes of the dynamic layers do not script.
    if is_scriptable():
        raise ValueError("scriptable=True: these models cannot be scripted (torch.export works)")
    for name, value in generic.items():
        if name not in _NEUTRAL_KWARGS:
            raise TypeError(f"unexpected keyword argument {name!r}")
        if value not in _NEUTRAL_KWARGS[name]:
            raise ValueError(
                f"{name}={value!r}: these models take only {' or '.join(map(repr, _NEUTRAL_KWARGS[name]))} "
                "(stochastic depth is drop_path_rate; the tokens are averaged before the head)"
            )
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = DynamicBackbone(cfg.replace(num_classes=num_classes, in_chans=in_chans))
    return model if dtype is None else model.to(dtype)


def _create(variant: str, arch: ArchConfig, pretrained: bool, **kwargs: Any) -> DynamicBackbone:
    from timm.models import build_model_with_cfg  # only timm calls this, so timm is imported by now

    overrides = {name: kwargs.pop(name) for name in _CONFIG_KWARGS if name in kwargs}
    cfg = arch.replace(**overrides)
    if kwargs.get("features_only"):
        raise ValueError("features_only=True: these models give no feature pyramid (forward_features gives the tokens)")
    asked = kwargs.pop("pretrained_cfg", None)
    # The architecture's own classes and channels, which its saved weights have: asked for others,
    # timm loads the weights that fit and starts the head (and adapts the stem) anew.
    pretrained_cfg = {
        "url": "",
        "num_classes": arch.num_classes,
        "input_size": (arch.in_chans, *cfg.img_size),
        "fixed_input_size": False,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "first_conv": "patch_embed",
        "classifier": "head",
    }
    if isinstance(asked, str):
        raise ValueError(f"pretrained_cfg={asked!r}: these models have no pretrained tags (give a dict)")
    if asked is not None:  # a user's keys win, as with timm's own models
        pretrained_cfg.update(asked if isinstance(asked, Mapping) else asked.to_dict())
    return build_model_with_cfg(_build, variant, pretrained, pretrained_cfg=pretrained_cfg, model_cfg=cfg, **kwargs)


def weightformer_tiny(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_tiny", PRESETS["weightformer_tiny"], pretrained, **kwargs)


def weightformer_small(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_small", PRESETS["weightformer_small"], pretrained, **kwargs)


def weightformer_base(pretrained: bool = False, **kwargs: Any) -> DynamicBackbone:
    return _create("weightformer_base", PRESETS["weightformer_base"], pretrained, **kwargs)


def dynamic_backbone(
    pretrained: bool = False, arch: ArchConfig | Mapping[str, Any] | str | Path | None = None, **kwargs: Any
) -> DynamicBackbone:
    """Any architecture of the space: ``arch`` is an ArchConfig, a mapping, or a YAML/JSON path."""
    if arch is None:
        raise TypeError("dynamic_backbone needs arch=<ArchConfig | dict | path to a YAML file>")
    return _create("dynamic_backbone", ArchConfig.coerce(arch), pretrained, **kwargs)


ENTRY_POINTS = (weightformer_tiny, weightformer_small, weightformer_base, dynamic_backbone)


def _register() -> None:
    from timm.models import register_model

    for entry in ENTRY_POINTS:
        register_model(entry)


def register_with_timm() -> None:
    """Register the entry points now if timm is imported, else as soon as it is."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("timm", _register))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds module ``name`` the usual way, with a loader that calls ``then`` once the module has
    run, and then leaves ``sys.meta_path``. A lookup that imports nothing (``importlib.util.find_spec``)
    leaves it in place for the import that follows."""

    def __init__(self, name: str, then: Callable[[], None]):
        self.name, self.then, self.looking = name, then, False

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != self.name or self.looking:
            return None
        self.looking = True  # the lookup below asks every finder again, this one included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self._imported)
        return spec

    def _imported(self) -> None:
        sys.meta_path.remove(self)
        self.then()


class _ThenLoader(importlib.abc.Loader):
    """A module's own loader, followed by a callback; everything else (resources, data) is the loader's."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], None]):
        self.loader, self.then = loader, then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.then()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
