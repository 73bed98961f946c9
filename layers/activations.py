"""Activation functions by name, as the search space spells them."""

from __future__ import annotations

from torch import nn

from .registry import Registry

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("silu")(nn.SiLU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("relu")(nn.ReLU)


def create_act(name: str) -> nn.Module:
    factory, _ = ACTIVATIONS.parse(name)
    return factory()
