"""The architecture config: one serialisable dataclass that fully describes a backbone.

Every field is a plain value (int, float, bool, str, tuple of ints) so that a config round-trips
exactly through YAML and JSON, can be flattened into a results table, and is what the search
samples. Names of strategies are validated against the registries that build them, so a config
that constructs is a config that builds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .dynamic_config import NAMED_DYNAMIC_FIELDS, DynamicConfig
from .mixers import MIXERS
from .pooling import pool_extent
from .registry import Registry
from .schema import ConfigError, build, coerce_fields
from .stochastic_depth import DROP_PATH_BRANCHES

__all__ = ["NAMED_FIELDS", "ArchConfig", "ConfigError", "DynamicConfig"]

#: Config fields (dotted paths) whose value names a registered strategy, and its registry.
NAMED_FIELDS: dict[str, Registry] = {
    "mixer": MIXERS,
    "drop_path_branches": DROP_PATH_BRANCHES,
    **{f"dynamic.{name}": registry for name, registry in NAMED_DYNAMIC_FIELDS.items()},
}


@dataclass(frozen=True)
class ArchConfig:
    """An isotropic backbone: patch stem, ``depth`` blocks of one width, LayerNorm + mean + linear head.

    Block i uses ``mixer`` when ``i % every == offset % every`` and is a static depthwise-conv
    block otherwise, which is how the reference model places its dynamic blocks (every 3rd,
    offset 1). With every = 1 all blocks use the mixer, whatever the offset.
    """

    img_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    num_classes: int = 1000
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 17
    mlp_ratio: float = 4.0
    mixer: str = "dynamic"  # dynamic | attention | linear_attention | static
    every: int = 3
    offset: int = 1
    kernel_size: int = 3  # every depthwise conv, static or dynamic
    num_heads: int = 3  # attention mixers only
    drop_path_rate: float = 0.0
    drop_path_branches: str = "both"  # both | mlp (the published model's: the mixer branch is never dropped)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int) and not isinstance(self.img_size, bool):
            object.__setattr__(self, "img_size", (self.img_size, self.img_size))  # square input
        coerce_fields(self)
        _check_values(self)

    # ------------------------------------------------------------------ derived quantities
    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H, W) at the config's input size."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def uses_mixer(self, index: int) -> bool:
        """Whether block ``index`` is a ``mixer`` block (otherwise a static conv block)."""
        return index % self.every == self.offset % self.every

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["img_size"] = list(self.img_size)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        return build(cls, data)

    def replace(self, **changes: Any) -> ArchConfig:
        """A copy with top-level fields changed; ``dynamic`` may be given as a partial mapping."""
        if isinstance(changes.get("dynamic"), Mapping):
            changes["dynamic"] = {**dataclasses.asdict(self.dynamic), **changes["dynamic"]}
        return build(type(self), {**self.to_dict(), **changes})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_yaml(cls, text: str) -> ArchConfig:
        return cls.from_dict(yaml.safe_load(text))

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        """Read a ``.yaml``/``.yml``/``.json`` file."""
        path = Path(path)
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())

    @classmethod
    def coerce(cls, arch: ArchConfig | Mapping[str, Any] | str | Path) -> ArchConfig:
        """Accept a config object, a mapping, or the path of a YAML/JSON file."""
        if isinstance(arch, ArchConfig):
            return arch
        if isinstance(arch, Mapping):
            return cls.from_dict(arch)
        if isinstance(arch, (str, Path)):
            return cls.load(arch)
        raise TypeError(f"expected an ArchConfig, a mapping or a file path, got {type(arch).__name__}")


# ---------------------------------------------------------------------- value checks
def _check_values(cfg: ArchConfig) -> None:
    def require(ok: bool, path: str, message: str) -> None:
        if not ok:
            raise ConfigError(path, message)

    for name in ("mixer", "drop_path_branches"):
        try:
            NAMED_FIELDS[name].validate(getattr(cfg, name))
        except ValueError as err:
            raise ConfigError(name, str(err)) from None
    for name in ("in_chans", "patch_size", "embed_dim", "depth", "every", "num_heads"):
        require(getattr(cfg, name) >= 1, name, "must be at least 1")
    require(cfg.num_classes >= 0, "num_classes", "must be 0 (no head) or more")
    require(
        all(s >= cfg.patch_size for s in cfg.img_size),
        "img_size",
        f"{list(cfg.img_size)} is smaller than the patch size {cfg.patch_size}",
    )
    require(cfg.mlp_hidden >= 1, "mlp_ratio", f"{cfg.mlp_ratio} gives an MLP of no units at width {cfg.embed_dim}")
    require(cfg.offset >= 0, "offset", "must not be negative")
    require(
        cfg.mixer == "static" or any(cfg.uses_mixer(i) for i in range(cfg.depth)),
        "offset",
        f"no block of {cfg.depth} is a {cfg.mixer} block (every {cfg.every}, offset {cfg.offset}): "
        "the model would be all static",
    )
    require(
        cfg.kernel_size >= 1 and cfg.kernel_size % 2 == 1,
        "kernel_size",
        f"must be odd and positive, got {cfg.kernel_size}",
    )
    require(0.0 <= cfg.drop_path_rate < 1.0, "drop_path_rate", "must be in [0, 1)")
    if cfg.mixer in ("attention", "linear_attention"):
        require(
            cfg.embed_dim % cfg.num_heads == 0,
            "num_heads",
            f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}",
        )

    dyn = cfg.dynamic
    if cfg.mixer != "dynamic":
        return
    require(dyn.fc1 or dyn.dwc or dyn.fc2, "dynamic", "at least one of fc1, dwc, fc2 must be dynamic")
    if dyn.fc1 or dyn.fc2:
        for width in (cfg.embed_dim, cfg.mlp_hidden):
            require(
                width % dyn.rank_ratio == 0,
                "dynamic.rank_ratio",
                f"{dyn.rank_ratio} does not divide the layer width {width}",
            )
        pool, grid = dyn.context_pool, cfg.grid
        extent = pool_extent(pool)
        require(
            extent is None or extent <= min(grid),
            "dynamic.pool",
            f"{pool!r} pools {extent}x{extent} tokens, larger than the {grid[0]}x{grid[1]} token grid "
            f"of a {cfg.img_size[0]}x{cfg.img_size[1]} input with patch {cfg.patch_size}",
        )
