"""Blocks of the isotropic backbone and the registry of token mixers that choose them.

Every block has the same skeleton, which reads directly against DESIGN.md section 3:

    x = stream_norm(x)                 # LN1 on the residual stream itself: the dynamic block only
    x = x + mixer(mixer_norm(x))       # mixer_norm: pre-norm LN1 for the attention mixers only
    x = x + mlp(mlp_norm(x))           # FC2(GELU(FC1(LN2(x)))), FC1/FC2 possibly dynamic

Unused norms are identities, so each mixer is exactly its published form.
"""
from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from .attention import Attention, LinearAttention
from .config import ArchConfig
from .dynamic_conv import DWConv, DynamicDWConv
from .dynamic_linear import DynamicLinear
from .registry import Registry

MIXERS: Registry = Registry("mixer")


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Mlp(nn.Module):
    def __init__(self, fc1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, nn.GELU(), fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp: Mlp,
        *,
        stream_norm: bool = False,
        mixer_norm: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.stream_norm = layer_norm(dim) if stream_norm else nn.Identity()
        self.mixer_norm = layer_norm(dim) if mixer_norm else nn.Identity()
        self.mixer = mixer
        self.mlp_norm = layer_norm(dim)
        self.mlp = mlp
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        x = self.stream_norm(x)
        x = x + self.drop_path(self.mixer(self.mixer_norm(x)))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


def static_mlp(cfg: ArchConfig) -> Mlp:
    return Mlp(nn.Linear(cfg.embed_dim, cfg.mlp_hidden), nn.Linear(cfg.mlp_hidden, cfg.embed_dim))


@MIXERS.register("static")
def static_block(cfg: ArchConfig, drop_path: float) -> Block:
    """x + DWConv(x), no norm before it; the non-mixer blocks of every backbone are these."""
    return Block(cfg.embed_dim, DWConv(cfg.embed_dim, cfg.kernel_size), static_mlp(cfg), drop_path=drop_path)


@MIXERS.register("dynamic")
def dynamic_block(cfg: ArchConfig, drop_path: float) -> Block:
    dim, hidden, dyn = cfg.embed_dim, cfg.mlp_hidden, cfg.dynamic
    conv = DynamicDWConv(dim, cfg.kernel_size, dyn) if dyn.dwc else DWConv(dim, cfg.kernel_size)
    fc1 = DynamicLinear(dim, hidden, dyn) if dyn.fc1 else nn.Linear(dim, hidden)
    fc2 = DynamicLinear(hidden, dim, dyn) if dyn.fc2 else nn.Linear(hidden, dim)
    return Block(dim, conv, Mlp(fc1, fc2), stream_norm=True, drop_path=drop_path)


def attention_block(attention: type[nn.Module]):
    """DeiT's block: pre-norm attention, then the MLP."""

    def build(cfg: ArchConfig, drop_path: float) -> Block:
        mixer = attention(cfg.embed_dim, cfg.num_heads)
        return Block(cfg.embed_dim, mixer, static_mlp(cfg), mixer_norm=True, drop_path=drop_path)

    return build


MIXERS.register("attention")(attention_block(Attention))
MIXERS.register("linear_attention")(attention_block(LinearAttention))


def create_block(cfg: ArchConfig, index: int, drop_path: float = 0.0) -> Block:
    """Block ``index`` of a backbone: the config's mixer where placement selects it, static elsewhere."""
    factory, _ = MIXERS.parse(cfg.mixer if cfg.uses_mixer(index) else "static")
    return factory(cfg, drop_path)
