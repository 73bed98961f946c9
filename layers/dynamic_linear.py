"""Dynamic linear layer: y = x (W0 + dW(x)) + b, with dW predicted from a pooled context.

The context P (B, M, in) of M tokens summarises all N input tokens. A small hypernetwork maps
each context token to a pair of factors, a_m (in) and b_m (out), and the update is their summed
outer product, dW = sum_m a_m^T b_m / (sqrt(in) * n) = A^T B / (sqrt(in) * n). The weight has a
fixed in x out size whatever N, so the layer stays O(N) while every output token depends on
every input token through dW.

n is the full token count N when M grows with the grid (avg/max pools: the paper's convention,
which makes dW independent of resolution) and M for fixed-size contexts (a mean over them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .dynamic_config import DynamicConfig
from .gating import create_gate
from .linear_predictors import LINEAR_PREDICTORS, FactorHead
from .pooling import create_pool
from .weight_norm import create_weight_norm


class DynamicLinear(nn.Module):
    """A linear layer on (B, H, W, in) tokens whose weight is W0 + dW(x), one weight per sample."""

    def __init__(self, in_features: int, out_features: int, dyn: DynamicConfig):
        super().__init__()
        predictor, _ = LINEAR_PREDICTORS.parse(dyn.linear_predictor)
        # Stored as (in, out) so that y = x W reads as in the paper and feeds baddbmm directly.
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.trunc_normal_(self.bias, std=0.02)
        self.pool = create_pool(dyn.context_pool, in_features, dyn.pool_rounding)
        self.factors = FactorHead(
            in_features,
            out_features,
            predictor,
            rank_ratio=dyn.rank_ratio,
            hyper_depth=dyn.hyper_depth,
            act=dyn.linear_act,
        )
        self.norm = create_weight_norm(dyn.norm)
        self.gate = create_gate(dyn.gate, in_features, out_features, channel_dim=-1)
        self.scale = 1.0 / math.sqrt(in_features)

    def delta(self, x: Tensor) -> Tensor:
        """The per-sample update dW of shape (B, in, out) for tokens x of shape (B, H, W, in)."""
        context = self.pool(x)
        count = x.shape[1] * x.shape[2] if self.pool.grows_with_grid else context.shape[1]
        dw = self.factors(context) * (self.scale / count)
        return self.gate(self.norm(dw, (1,)), context.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        weight = self.weight + self.delta(x)
        y = torch.baddbmm(self.bias, x.reshape(batch, height * width, channels), weight)
        return y.view(batch, height, width, -1)
