"""Hypernetworks of the dynamic linear layer: pooled context -> the factors of a weight update.

Each predictor named in the search space (the variants the paper compares) is a ``LinearPredictor``:
which sides of the factor head carry an activation, whether the projection is a deeper MLP, and
whether it reads the single global mean instead of the configured pool. ``FactorHead`` builds the
update from those choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import create_act
from .registry import Registry


@dataclass(frozen=True)
class LinearPredictor:
    act_a: bool  # an activation on the input-side factor
    act_b: bool  # an activation on the output-side factor
    deep: bool = False  # hyper_depth hidden layers before the factor split
    global_context: bool = False  # the single global mean vector instead of the configured pool


LINEAR_PREDICTORS: Registry = Registry("linear predictor")
LINEAR_PREDICTORS.register("gap")(LinearPredictor(act_a=True, act_b=True, global_context=True))
LINEAR_PREDICTORS.register("linear")(LinearPredictor(act_a=False, act_b=False))
LINEAR_PREDICTORS.register("nonlinear")(LinearPredictor(act_a=True, act_b=False))
LINEAR_PREDICTORS.register("bilateral")(LinearPredictor(act_a=True, act_b=True))
LINEAR_PREDICTORS.register("deep")(LinearPredictor(act_a=True, act_b=True, deep=True))


def context_pool(linear_predictor: str, pool: str) -> str:
    """The pool a linear predictor actually reads: its own global mean, or the configured one."""
    predictor, _ = LINEAR_PREDICTORS.parse(linear_predictor)
    return "global" if predictor.global_context else pool


class FactorHead(nn.Module):
    """Context (B, M, in) -> the summed outer product A^T B (B, in, out) of its factors, or those factors.

    h = MLP(P) is split into h_a (in/r) and h_b (out/r); A = act(h_a) U and B = act(h_b) V, where
    U (in/r x in) and V (out/r x out) lift the rank bottleneck back to the layer's dimensions.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        predictor: LinearPredictor,
        *,
        rank_ratio: int,
        hyper_depth: int,
        act: str,
    ):
        super().__init__()
        self.rank_in, self.rank_out = in_features // rank_ratio, out_features // rank_ratio
        hidden: list[nn.Module] = []
        for _ in range(hyper_depth if predictor.deep else 0):
            hidden += [nn.Linear(in_features, in_features), create_act(act)]
        self.proj = nn.Sequential(*hidden, nn.Linear(in_features, self.rank_in + self.rank_out))
        self.act_a = create_act(act) if predictor.act_a else nn.Identity()
        self.act_b = create_act(act) if predictor.act_b else nn.Identity()
        self.u = nn.Parameter(torch.empty(self.rank_in, in_features))
        self.v = nn.Parameter(torch.empty(self.rank_out, out_features))
        nn.init.trunc_normal_(self.u, std=0.02)
        nn.init.trunc_normal_(self.v, std=0.02)

    def factors(self, context: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """``scale`` A^T B as left^T right: left (B, r, in), right (B, r, out), r the cheaper inner size.

        A^T B = (h_a U)^T (h_b V) = U^T ((h_a^T h_b) V). The factor-first order (r = M) costs
        O(M in out), the core-first order (r = in/r) O(in/r out (in + M/r)); take the cheaper, as M
        grows with the grid. ``scale`` multiplies both activated factors by its square root before
        any sum over context tokens, so that a sum of large terms cannot overflow in float16 before
        the small scale reaches it, and neither factor underflows.
        """
        h_a, h_b = self.proj(context).split([self.rank_in, self.rank_out], dim=-1)
        root = math.sqrt(scale)
        h_a, h_b = self.act_a(h_a) * root, self.act_b(h_b) * root
        tokens, (rank_in, inp), (rank_out, out) = context.shape[1], self.u.shape, self.v.shape
        factor_first = tokens * (rank_in * inp + rank_out * out + inp * out)
        core_first = tokens * rank_in * rank_out + rank_in * rank_out * out + inp * rank_in * out
        if factor_first <= core_first:
            return h_a @ self.u, h_b @ self.v
        return self.u.expand(context.shape[0], -1, -1), torch.bmm(h_a.transpose(1, 2), h_b) @ self.v

    def forward(self, context: Tensor) -> Tensor:
        left, right = self.factors(context)
        return torch.bmm(left.transpose(1, 2), right)
