"""Stochastic depth: DropPath, and which residual branches of a block it may drop, by the name the config gives.

The published model drops the MLP branch only and never the token mixer (docs/design.md section 3);
dropping both branches is the common timm convention and the default for every other configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .registry import Registry


class DropPath(nn.Module):
    """Drops a residual branch for whole samples at rate drop_prob in training, scaling the kept ones by
    1 / (1 - drop_prob) so the branch's expected output is unchanged; the identity in eval.

    The same draws as timm's DropPath (one Bernoulli per sample, in the input's dtype), so a
    seeded run trains the same model; written here so that the layers import without timm.
    """

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob  # timm's name, which model surgery code may read

    def forward(self, x: Tensor) -> Tensor:  # (B, ...) -> (B, ...)
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


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
