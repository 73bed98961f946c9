"""How the dynamic sub-layers of a dynamic block predict their weights: one frozen dataclass.

Every strategy is named by a string that a registry resolves, so each name is checked here, on
construction: a ``DynamicConfig`` that exists is one the layers can build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .activations import ACTIVATIONS
from .gating import GATES
from .kernel_predictors import CONV_PREDICTORS
from .linear_predictors import LINEAR_PREDICTORS, context_pool
from .pooling import POOL_ROUNDINGS, POOLS
from .registry import Registry
from .schema import ConfigError, coerce_fields
from .weight_norm import WEIGHT_NORMS

#: Fields whose value names a registered strategy, and the registry that resolves it.
NAMED_DYNAMIC_FIELDS: dict[str, Registry] = {
    "linear_predictor": LINEAR_PREDICTORS,
    "pool": POOLS,
    "pool_rounding": POOL_ROUNDINGS,
    "linear_act": ACTIVATIONS,
    "conv_predictor": CONV_PREDICTORS,
    "conv_act": ACTIVATIONS,
    "norm": WEIGHT_NORMS,
    "gate": GATES,
}


@dataclass(frozen=True)
class DynamicConfig:
    """The strategy axes of docs/design.md section 2; the defaults are the published model's, except
    ``pool_rounding``, whose default (ceil) pools every token on any grid (section 2.1)."""

    fc1: bool = True  # which sub-layers carry W0 + dW(x); the others stay static
    dwc: bool = True
    fc2: bool = False
    linear_predictor: str = "bilateral"  # gap | linear | nonlinear | bilateral | deep
    pool: str = "avg2"  # context of the linear predictors: global | avg<k> | max<k> | adaptive<g> | attn<m>
    pool_rounding: str = "ceil"  # avg<k>/max<k> on a grid k does not divide: ceil | floor (the published model's)
    rank_ratio: int = 4  # factor widths are in/r and out/r
    hyper_depth: int = 1  # hidden layers of the `deep` predictor's MLP (1-3); other predictors have none
    linear_act: str = "silu"
    conv_predictor: str = "adaptive"  # gap | adaptive | amp_dir | conv
    conv_act: str = "gelu"
    norm: str = "unit1"  # none | unit1 | layernorm | tanh, applied to dW and dK
    gate: str = "none"  # none | scalar | sigmoid

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name, registry in NAMED_DYNAMIC_FIELDS.items():
            try:
                registry.validate(getattr(self, name))
            except ValueError as err:
                raise ConfigError(name, str(err)) from None
        if not 1 <= self.hyper_depth <= 3:
            raise ConfigError("hyper_depth", f"must be 1, 2 or 3, got {self.hyper_depth}")
        if self.rank_ratio < 1:
            raise ConfigError("rank_ratio", f"must be at least 1, got {self.rank_ratio}")

    @property
    def context_pool(self) -> str:
        """The pool the linear predictors actually read."""
        return context_pool(self.linear_predictor, self.pool)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
