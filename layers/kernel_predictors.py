"""Hypernetworks of the dynamic depthwise conv: a pooled map -> a per-sample kernel update dK.

Each predictor reads the input adaptively pooled to a channels-last g x g map (g is its ``grid``)
and returns dK of shape (B, C, k, k), so its cost does not depend on the number of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import create_act
from .registry import Registry

CONV_PREDICTORS: Registry = Registry("conv predictor")


class KernelPredictor(nn.Module):
    """Pooled map (B, g, g, C) -> kernel update dK (B, C, k, k). ``grid`` is g."""

    grid: int


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 conv applied to a channels-last map (B, g, g, C) as the linear map it is.

    The parameters stay a Conv2d's, as in the published checkpoints. On maps this small the
    conv's oneDNN set-up, forward and backward, costs several times its arithmetic, while the
    matmul needs neither a layout change nor a reorder: the dynamic block takes 0.96x the conv
    route's time at 64 tokens and 0.95x at 196 (medians of three A/Bs in the same processes,
    benchmarks/layer_scaling.py).
    """
    return F.linear(x, conv.weight.flatten(1), conv.bias)


@CONV_PREDICTORS.register("gap")
class GapKernel(KernelPredictor):
    """Global mean -> MLP -> all C k^2 taps; the hidden layer is C/4 wide so the output layer stays small."""

    def __init__(self, dim: int, kernel_size: int, act: str):
        super().__init__()
        self.grid, self.kernel_size = 1, kernel_size
        hidden = max(1, dim // 4)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), create_act(act), nn.Linear(hidden, dim * kernel_size**2, bias=False)
        )

    def forward(self, pooled: Tensor) -> Tensor:
        batch, dim = pooled.shape[0], pooled.shape[-1]
        return self.mlp(pooled.flatten(1)).view(batch, dim, self.kernel_size, self.kernel_size)


@CONV_PREDICTORS.register("adaptive")
class AdaptiveKernel(KernelPredictor):
    """Pool to k x k so tap (i, j) is predicted from its own region of the image (the paper's choice)."""

    def __init__(self, dim: int, kernel_size: int, act: str):
        super().__init__()
        self.grid = kernel_size
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim, 1), create_act(act), nn.Conv2d(dim, dim, 1, bias=False))

    def forward(self, pooled: Tensor) -> Tensor:
        first, act, second = self.mlp
        return pointwise(second, act(pointwise(first, pooled))).permute(0, 3, 1, 2)


@CONV_PREDICTORS.register("amp_dir")
class AmplitudeDirectionKernel(KernelPredictor):
    """A unit-norm direction per channel from the k x k map, times an amplitude in (-1, 1) from its mean."""

    def __init__(self, dim: int, kernel_size: int, act: str):
        super().__init__()
        self.grid = kernel_size
        self.direction = AdaptiveKernel(dim, kernel_size, act)
        self.amplitude = nn.Linear(dim, dim)

    def forward(self, pooled: Tensor) -> Tensor:
        direction = self.direction(pooled)
        direction = F.normalize(direction.flatten(2), dim=-1).view_as(direction)
        amplitude = torch.tanh(self.amplitude(pooled.mean(dim=(1, 2))))
        return direction * amplitude[:, :, None, None]


@CONV_PREDICTORS.register("conv")
class ConvKernel(KernelPredictor):
    """A 3 x 3 depthwise conv over a (k+2) x (k+2) pooled map yields the k x k taps, then a 1x1 mixes channels."""

    def __init__(self, dim: int, kernel_size: int, act: str):
        super().__init__()
        self.grid = kernel_size + 2
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim, 3, groups=dim), create_act(act), nn.Conv2d(dim, dim, 1, bias=False)
        )

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled.permute(0, 3, 1, 2))


def create_kernel_predictor(name: str, dim: int, kernel_size: int, act: str) -> KernelPredictor:
    factory, _ = CONV_PREDICTORS.parse(name)
    return factory(dim, kernel_size, act)
