"""Reference trials: where the paper's design and the baselines stand in every study.

Each reference is the WeightFormer block design with its mixer swapped (dynamic, softmax
attention, static), at the space's middle width and depth. A reference is enqueued only if the
space can express it exactly: every value that defines it must be one the space can take.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from layers import PRESETS, ConfigError

from .space import Param, SearchSpec

_WEIGHTFORMER = PRESETS["weightformer_tiny"]
_PLACEMENT = {
    "every": _WEIGHTFORMER.every,
    "offset": _WEIGHTFORMER.offset,
    "kernel_size": _WEIGHTFORMER.kernel_size,
    "mlp_ratio": _WEIGHTFORMER.mlp_ratio,
}
# Fields of the preset that do not define the reference: hyper_depth, which `bilateral` ignores,
# and pool_rounding. The reference is the paper's design on the study's own terms: the published
# code's odd-grid pooling (floor) and MLP-only stochastic depth are conventions that every trial
# of a study shares (the config defaults, ceil and both), not axes a study compares, and as no
# space samples them, defining the reference by them would leave it out of every space with an
# odd grid or a drop path (docs/design.md section 3).
_NOT_DEFINING = ("hyper_depth", "pool_rounding")
_DYNAMIC = {f"dynamic.{k}": v for k, v in dataclasses.asdict(_WEIGHTFORMER.dynamic).items() if k not in _NOT_DEFINING}

REFERENCES: dict[str, dict[str, Any]] = {
    "weightformer": {"mixer": "dynamic", **_PLACEMENT, **_DYNAMIC},
    "attention": {"mixer": "attention", **_PLACEMENT},
    "static": {"mixer": "static", "kernel_size": _WEIGHTFORMER.kernel_size, "mlp_ratio": _WEIGHTFORMER.mlp_ratio},
}


def middle(param: Param) -> Any:
    """The value a reference takes for a parameter it does not define: the middle of its range.

    Numbers take the middle by size (the geometric one on a log scale, on the grid where there is
    one); named choices the middle of the list as written.
    """
    options = param.possible()
    if options is None:
        return math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    if not all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options):
        return options[len(options) // 2]
    ordered = sorted(options)
    if not param.log:
        return ordered[len(ordered) // 2]
    centre = math.sqrt(param.low * param.high)
    return min(ordered, key=lambda o: abs(math.log(o / centre)))


def reference_params(spec: SearchSpec) -> dict[str, dict[str, Any]]:
    """Sampled-parameter values of each reference that fits the space, by reference name."""
    out = {}
    for name, defining in REFERENCES.items():
        values = _fit(spec, defining)
        if values is not None:
            out[name] = {p.name: values[p.name] for p in spec.params if p.name in values and not p.fixed}
    return out


def _fit(spec: SearchSpec, defining: dict[str, Any]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for param in spec.params:
        if not param.active(values):
            continue
        if param.name in defining:
            if not param.contains(defining[param.name]):
                return None
            values[param.name] = defining[param.name]
        else:
            values[param.name] = middle(param)
    try:
        arch, _ = spec.configs(values)
    except ConfigError:
        return None
    # Defining values the space does not set must hold through the config's defaults.
    flat = {**arch.to_dict(), **{f"dynamic.{k}": v for k, v in arch.to_dict()["dynamic"].items()}}
    if any(flat[key] != value for key, value in defining.items() if not _irrelevant(arch, key)):
        return None
    return values


def _irrelevant(arch, key: str) -> bool:
    # Dynamic fields only matter when the mixer is dynamic; others always apply.
    return key.startswith("dynamic.") and arch.mixer != "dynamic"
