"""The token mixers a block can use, by the name the config gives them.

A block is ``x = x + mixer(x)`` then ``x = x + mlp(x)`` (see ``blocks.py``); mixers differ in the
module that mixes tokens and in where the block puts its norms. Each ``TokenMixer`` says both, so
that the block reads as one skeleton whatever the mixer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .attention import Attention, LinearAttention
from .dynamic_config import DynamicConfig
from .dynamic_conv import DWConv, DynamicDWConv
from .registry import Registry

#: (dim, kernel_size, num_heads, dynamic config) -> a module on (B, H, W, C) tokens
MixerFactory = Callable[[int, int, int, DynamicConfig], nn.Module]


@dataclass(frozen=True)
class TokenMixer:
    build: MixerFactory
    stream_norm: bool = False  # LN1 on the residual stream itself (the dynamic block)
    pre_norm: bool = False  # LN1 before the mixer only (DeiT's pre-norm attention)
    dynamic_mlp: bool = False  # the block's FC1/FC2 follow the dynamic config


MIXERS: Registry = Registry("mixer")
# x + DWConv(x), no norm before it; the non-mixer blocks of every backbone are these.
MIXERS.register("static")(TokenMixer(lambda dim, kernel, heads, dyn: DWConv(dim, kernel)))
MIXERS.register("dynamic")(
    TokenMixer(
        lambda dim, kernel, heads, dyn: DynamicDWConv(dim, kernel, dyn) if dyn.dwc else DWConv(dim, kernel),
        stream_norm=True,
        dynamic_mlp=True,
    )
)
MIXERS.register("attention")(TokenMixer(lambda dim, kernel, heads, dyn: Attention(dim, heads), pre_norm=True))
MIXERS.register("linear_attention")(
    TokenMixer(lambda dim, kernel, heads, dyn: LinearAttention(dim, heads), pre_norm=True)
)
