"""Context compression: N tokens on an H x W grid -> M context tokens that summarise all of them.

Every pool maps tokens of shape (B, H, W, C) to a context of shape (B, M, C). A dynamic layer
predicts its weight from this context, so the context is the layer's only route to global
information. Grids the pool size does not divide are handled with ceil-mode pooling, whose last
window averages (or maxes) only the tokens that exist; floor rounding, the published model's,
leaves the incomplete windows out (docs/design.md sections 2.1 and 3).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

POOLS: Registry = Registry("pooling")

#: How a k x k window pool treats a grid side k does not divide: whether it pools in ceil mode.
POOL_ROUNDINGS: Registry = Registry("pool rounding")
POOL_ROUNDINGS.register("ceil")(True)
POOL_ROUNDINGS.register("floor")(False)


class ContextPool(nn.Module):
    """Base class. ``grows_with_grid`` tells whether M is proportional to the token count."""

    grows_with_grid: bool = False

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, M, C)
        raise NotImplementedError


@POOLS.register("global")
class GlobalPool(ContextPool):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2)).unsqueeze(1)


class _GridPool(ContextPool):
    """k x k windows with stride k on the token grid: M = ceil(H/k) * ceil(W/k), or with floor
    rounding floor(H/k) * floor(W/k), the tokens past the last whole window left out."""

    grows_with_grid = True

    def __init__(self, dim: int, size: int, rounding: str = "ceil"):
        super().__init__()
        self.size = size
        self.ceil_mode, _ = POOL_ROUNDINGS.parse(rounding)

    def _pool(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not self.ceil_mode and min(x.shape[1:3]) < self.size:  # the published rounding keeps no window
            raise ValueError(
                f"a {self.size} x {self.size} pool in floor rounding needs a token grid of at least "
                f"{self.size} x {self.size}, got {x.shape[1]} x {x.shape[2]}: give a larger input"
            )
        pooled = self._pool(x.permute(0, 3, 1, 2))
        return pooled.flatten(2).transpose(1, 2)


@POOLS.register("avg", parametric=True)
class AvgPool(_GridPool):
    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.size, self.size, ceil_mode=self.ceil_mode)


@POOLS.register("max", parametric=True)
class MaxPool(_GridPool):
    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.size, self.size, ceil_mode=self.ceil_mode)


def adaptive_avg_pool(x: Tensor, size: int) -> Tensor:
    """Adaptive average pooling of channels-last tokens (B, H, W, C) -> (B, g, g, C).

    Same windows as F.adaptive_avg_pool2d, computed as two small matmuls with averaging matrices:
    on channels-last data this is several times faster, backward included, than the pooling op.
    """
    rows = _averaging_matrix(x.shape[1], size, x)
    cols = _averaging_matrix(x.shape[2], size, x)
    pooled_cols = cols @ x  # (B, H, g, C)
    return (rows @ pooled_cols.flatten(2)).unflatten(2, (size, x.shape[3]))


def _averaging_matrix(length: int, size: int, like: Tensor) -> Tensor:
    """(size, length) matrix whose row i averages adaptive window i: [floor(i L/g), ceil((i+1) L/g))."""
    # Only plain tensors share the cache: a fake tensor (tracing, memory estimators) belongs to its
    # mode, and one cached from it would break every later eager call on that grid, and vice versa.
    build = _cached_averaging_matrix if type(like) is Tensor else _cached_averaging_matrix.__wrapped__
    return build(length, size, like.device, like.dtype)


@functools.lru_cache(maxsize=256)
def _cached_averaging_matrix(length: int, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Built once per grid and dtype: rebuilding it took a dozen small ops per pool per forward.
    # A normal tensor even inside inference mode, so that a later training step can save it.
    with torch.inference_mode(False), torch.no_grad():
        index = torch.arange(size, device=device)
        starts = (index * length) // size
        ends = -((-(index + 1) * length) // size)
        position = torch.arange(length, device=device)
        inside = (position >= starts[:, None]) & (position < ends[:, None])
        return inside.to(dtype) / (ends - starts)[:, None].to(dtype)


@POOLS.register("adaptive", parametric=True)
class AdaptivePool(ContextPool):
    """Average pooling to a fixed g x g grid, so M = g^2 whatever the resolution."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool(x, self.size).flatten(1, 2)


@POOLS.register("attn", parametric=True)
class AttentionPool(ContextPool):
    """m learned queries attend over all tokens: a learned, content-dependent summary in O(N m C)."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(size, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.key = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(1, 2)  # (B, N, C)
        keys = self.key(tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        return F.scaled_dot_product_attention(
            queries.unsqueeze(1), keys.unsqueeze(1), tokens.unsqueeze(1), scale=1.0 / math.sqrt(tokens.shape[-1])
        ).squeeze(1)


def create_pool(name: str, dim: int, rounding: str = "ceil") -> ContextPool:
    """The pool ``name``; ``rounding`` (ceil | floor) applies to the k x k window pools only."""
    factory, size = POOLS.parse(name)
    if size is None:
        return factory()
    return factory(dim, size, rounding) if issubclass(factory, _GridPool) else factory(dim, size)


def pool_extent(name: str) -> int | None:
    """The token-grid side a pool's window needs, None if any grid will do (adaptive pools
    average overlapping windows, so they work on grids smaller than their output). In either
    rounding a grid side of at least the window's holds one whole window, so the bound is the same."""
    factory, size = POOLS.parse(name)
    return size if factory in (AvgPool, MaxPool) else None
