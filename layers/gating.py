"""Gates on the predicted update: how much of dW reaches the weight, W = W0 + g * dW.

A gate takes the update and the layer's context tokens (B, M, C) and returns the gated update;
a gate that reads the input summarises those tokens itself (their mean), so that a layer without
one computes no summary.
``channel_dim`` is the dimension of dW that holds output channels (last for a linear layer's
(B, in, out) update, 1 for a conv's (B, C, k, k) kernel update).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import Registry

GATES: Registry = Registry("gate")


class Gate(nn.Module):
    """Every gate scales each output channel of the update: ``scale`` gives that factor, shaped to
    broadcast against an update with ``dims`` dimensions, or None for no gate. A dynamic linear
    layer applies it to its factored update without building the gated one (dynamic_linear.py)."""

    def scale(self, context: Tensor, dims: int) -> Tensor | None:  # context: (B, M, C)
        raise NotImplementedError

    def forward(self, dw: Tensor, context: Tensor) -> Tensor:
        scale = self.scale(context, dw.dim())
        return dw if scale is None else dw * scale


@GATES.register("none")
class NoGate(Gate):
    def __init__(self, context_dim: int, channels: int, channel_dim: int):
        super().__init__()

    def scale(self, context: Tensor, dims: int) -> Tensor | None:
        return None


@GATES.register("scalar")
class ScalarGate(Gate):
    """One learned scalar, initialised at 0 so that training starts from the static network."""

    def __init__(self, context_dim: int, channels: int, channel_dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(()))

    def scale(self, context: Tensor, dims: int) -> Tensor:
        return self.gate


@GATES.register("sigmoid")
class SigmoidGate(Gate):
    """A per-sample, per-output-channel gate in (0, 1) predicted from the mean context token."""

    def __init__(self, context_dim: int, channels: int, channel_dim: int):
        super().__init__()
        self.proj = nn.Linear(context_dim, channels)
        self.channel_dim = channel_dim

    def scale(self, context: Tensor, dims: int) -> Tensor:
        gate = torch.sigmoid(self.proj(context.mean(dim=1)))  # (B, channels)
        shape = [gate.shape[0]] + [1] * (dims - 1)
        shape[self.channel_dim] = gate.shape[1]
        return gate.view(shape)


def create_gate(name: str, context_dim: int, channels: int, channel_dim: int) -> Gate:
    factory, _ = GATES.parse(name)
    return factory(context_dim, channels, channel_dim)
