"""Stochastic depth: which residual branches of a block DropPath may drop, by the name the config gives.

The published model drops the MLP branch only and never the token mixer (docs/design.md section 3);
dropping both branches is the common timm convention and the default for every other configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.layers import DropPath
from torch import nn

from .registry import Registry


@dataclass(frozen=True)
class DropPathBranches:
    mixer: bool
    mlp: bool


BOTH = DropPathBranches(mixer=True, mlp=True)
DROP_PATH_BRANCHES: Registry = Registry("drop-path branches")
DROP_PATH_BRANCHES.register("both")(BOTH)
DROP_PATH_BRANCHES.register("mlp")(DropPathBranches(mixer=False, mlp=True))


def create_drop_path(rate: float, applies: bool) -> nn.Module:
    return DropPath(rate) if applies and rate > 0 else nn.Identity()
