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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import create_act
from .config import DynamicConfig
from .gating import create_gate
from .pooling import create_pool
from .registry import Registry
from .weight_norm import create_weight_norm


@dataclass(frozen=True)
class LinearPredictor:
    """Which sides of the factor head carry an activation, and how the context is formed."""

    act_a: bool
    act_b: bool
    deep: bool = False  # hyper_depth hidden layers before the factor split
    global_context: bool = False  # the single global mean vector instead of the configured pool


LINEAR_PREDICTORS: Registry = Registry("linear predictor")
LINEAR_PREDICTORS.register("gap")(LinearPredictor(act_a=True, act_b=True, global_context=True))
LINEAR_PREDICTORS.register("linear")(LinearPredictor(act_a=False, act_b=False))
LINEAR_PREDICTORS.register("nonlinear")(LinearPredictor(act_a=True, act_b=False))
LINEAR_PREDICTORS.register("bilateral")(LinearPredictor(act_a=True, act_b=True))
LINEAR_PREDICTORS.register("deep")(LinearPredictor(act_a=True, act_b=True, deep=True))


def context_pool(dyn: DynamicConfig) -> str:
    """The pool a config's linear predictor actually uses."""
    predictor, _ = LINEAR_PREDICTORS.parse(dyn.linear_predictor)
    return "global" if predictor.global_context else dyn.pool


class FactorHead(nn.Module):
    """Context (B, M, in) -> the summed outer product A^T B (B, in, out) of its factors.

    h = MLP(P) is split into h_a (in/r) and h_b (out/r); A = act(h_a) U and B = act(h_b) V, where
    U (in/r x in) and V (out/r x out) lift the rank bottleneck back to the layer's dimensions.
    """

    def __init__(self, in_features: int, out_features: int, predictor: LinearPredictor, dyn: DynamicConfig):
        super().__init__()
        self.rank_in, self.rank_out = in_features // dyn.rank_ratio, out_features // dyn.rank_ratio
        hidden: list[nn.Module] = []
        for _ in range(dyn.hyper_depth if predictor.deep else 0):
            hidden += [nn.Linear(in_features, in_features), create_act(dyn.linear_act)]
        self.proj = nn.Sequential(*hidden, nn.Linear(in_features, self.rank_in + self.rank_out))
        self.act_a = create_act(dyn.linear_act) if predictor.act_a else nn.Identity()
        self.act_b = create_act(dyn.linear_act) if predictor.act_b else nn.Identity()
        self.u = nn.Parameter(torch.empty(self.rank_in, in_features))
        self.v = nn.Parameter(torch.empty(self.rank_out, out_features))
        nn.init.trunc_normal_(self.u, std=0.02)
        nn.init.trunc_normal_(self.v, std=0.02)

    def forward(self, context: Tensor) -> Tensor:
        h_a, h_b = self.proj(context).split([self.rank_in, self.rank_out], dim=-1)
        h_a, h_b = self.act_a(h_a), self.act_b(h_b)
        # A^T B = (h_a U)^T (h_b V) = U^T ((h_a^T h_b) V). The factor-first order costs O(M in out),
        # the core-first order O(in/r out (in + M/r)); take the cheaper, as M grows with the grid.
        tokens, (rank_in, inp), (rank_out, out) = context.shape[1], self.u.shape, self.v.shape
        factor_first = tokens * (rank_in * inp + rank_out * out + inp * out)
        core_first = tokens * rank_in * rank_out + rank_in * rank_out * out + inp * rank_in * out
        if factor_first <= core_first:
            return torch.bmm((h_a @ self.u).transpose(1, 2), h_b @ self.v)
        return self.u.t() @ (torch.bmm(h_a.transpose(1, 2), h_b) @ self.v)


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
        self.pool = create_pool(context_pool(dyn), in_features)
        self.factors = FactorHead(in_features, out_features, predictor, dyn)
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
