"""Normalisation of a predicted weight update dW before it is added to the static weight.

The predicted update is unbounded in principle; bounding it keeps W0 + dW close to a weight the
layer can train with. Each function normalises over ``dims``: the input dimension of each output
column for a linear layer, the k x k taps of each channel for a depthwise conv.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .registry import Registry

WeightNorm = Callable[[Tensor, tuple[int, ...]], Tensor]
WEIGHT_NORMS: Registry = Registry("weight normalisation")


@WEIGHT_NORMS.register("none")
def no_norm(dw: Tensor, dims: tuple[int, ...]) -> Tensor:
    return dw


@WEIGHT_NORMS.register("unit1")
def unit1(dw: Tensor, dims: tuple[int, ...]) -> Tensor:
    """dW / (||dW|| + 1): small updates pass almost unchanged, large ones saturate at norm 1."""
    return dw / (torch.linalg.vector_norm(dw, dim=dims, keepdim=True) + 1.0)


@WEIGHT_NORMS.register("layernorm")
def layernorm(dw: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Zero mean, and unit norm (not unit variance) so the scale matches unit1's bound."""
    size = math.prod(dw.shape[d] for d in dims)
    centred = dw - dw.mean(dim=dims, keepdim=True)
    variance = centred.pow(2).mean(dim=dims, keepdim=True)
    return centred * torch.rsqrt(variance + 1e-6) / math.sqrt(size)


@WEIGHT_NORMS.register("tanh")
def tanh(dw: Tensor, dims: tuple[int, ...]) -> Tensor:
    return torch.tanh(dw)


def create_weight_norm(name: str) -> WeightNorm:
    fn, _ = WEIGHT_NORMS.parse(name)
    return fn
