"""Depthwise convolutions on (B, H, W, C) tokens: the static one and the dynamic K0 + dK(x).

A dynamic depthwise conv predicts one C x k x k kernel per sample from an adaptively pooled map
of the input (g x g, g chosen by the predictor; see ``kernel_predictors.py``), so its cost is the
conv's own O(N C k^2) plus a predictor whose size does not depend on N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dynamic_config import DynamicConfig
from .gating import create_gate
from .kernel_predictors import KernelPredictor, create_kernel_predictor
from .pooling import adaptive_avg_pool
from .weight_norm import create_weight_norm


class DWConv(nn.Module):
    """The static depthwise conv (bias, 'same' padding) applied to channels-last tokens."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DynamicDWConv(nn.Module):
    """Depthwise conv with kernel K0 + dK(x): one kernel per sample, applied as a grouped conv."""

    def __init__(self, dim: int, kernel_size: int, dyn: DynamicConfig):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.trunc_normal_(self.bias, std=0.02)
        self.predictor: KernelPredictor = create_kernel_predictor(dyn.conv_predictor, dim, kernel_size, dyn.conv_act)
        self.norm = create_weight_norm(dyn.norm)
        self.gate = create_gate(dyn.gate, dim, dim, channel_dim=1)

    def delta(self, x: Tensor) -> Tensor:
        """The per-sample kernel update dK of shape (B, C, k, k) for tokens (B, H, W, C)."""
        pooled = adaptive_avg_pool(x, self.predictor.grid)  # (B, g, g, C)
        # The conv predictors (adaptive, conv, amp_dir) leave their output channels-last, where
        # the norm's reduction over the k x k taps strides across channels: one copy makes it
        # contiguous (a no-op for gap), and the norm and its gradient then cost less than half as
        # much, which saves about a tenth of the mixer's time at small grids.
        kernel = self.predictor(pooled).contiguous()
        return self.gate(self.norm(kernel, (2, 3)), pooled.flatten(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        if batch == 0:  # a grouped conv of no groups does not exist
            return x.clone()
        kernel = self.weight.unsqueeze(0) + self.delta(x).unsqueeze(2)  # (B, C, 1, k, k)
        # B per-sample kernels become one grouped conv by folding the batch into the channels.
        # Tokens laid out as (H, W, B * C) keep that conv channels-last, where oneDNN's depthwise
        # kernels are about twice as fast as on the (B * C, H, W) layout.
        folded = x.permute(1, 2, 0, 3).reshape(1, height, width, batch * dim).permute(0, 3, 1, 2)
        y = F.conv2d(
            folded,
            kernel.reshape(batch * dim, 1, self.kernel_size, self.kernel_size),
            self.bias.repeat(batch),
            padding=self.kernel_size // 2,
            groups=batch * dim,
        )
        return y.permute(0, 2, 3, 1).reshape(height, width, batch, dim).permute(2, 0, 1, 3)
