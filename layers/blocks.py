"""Blocks of the isotropic backbone: one skeleton, specialised by the token mixer it uses.

Every block reads directly against docs/design.md section 3:

    x = stream_norm(x)                            # LN1 on the residual stream: the dynamic block only
    x = x + drop_path(mixer(mixer_norm(x)))       # mixer_norm: pre-norm LN1 for the attention mixers only
    x = x + drop_path(mlp(mlp_norm(x)))           # FC2(GELU(FC1(LN2(x)))), FC1/FC2 possibly dynamic

Unused norms are identities, so each mixer is exactly its published form; so is a branch that
stochastic depth does not touch (``drop_path_branches``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import ArchConfig
from .dynamic_linear import DynamicLinear
from .mixers import MIXERS, TokenMixer
from .stochastic_depth import BOTH, DROP_PATH_BRANCHES, DropPathBranches, create_drop_path


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
        drop_path_branches: DropPathBranches = BOTH,
    ):
        super().__init__()
        self.stream_norm = layer_norm(dim) if stream_norm else nn.Identity()
        self.mixer_norm = layer_norm(dim) if mixer_norm else nn.Identity()
        self.mixer = mixer
        self.mlp_norm = layer_norm(dim)
        self.mlp = mlp
        self.drop_path_mixer = create_drop_path(drop_path, drop_path_branches.mixer)
        self.drop_path_mlp = create_drop_path(drop_path, drop_path_branches.mlp)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        x = self.stream_norm(x)
        x = x + self.drop_path_mixer(self.mixer(self.mixer_norm(x)))
        return x + self.drop_path_mlp(self.mlp(self.mlp_norm(x)))


def _mlp(cfg: ArchConfig, kind: TokenMixer) -> Mlp:
    dim, hidden, dyn = cfg.embed_dim, cfg.mlp_hidden, cfg.dynamic
    fc1 = DynamicLinear(dim, hidden, dyn) if kind.dynamic_mlp and dyn.fc1 else nn.Linear(dim, hidden)
    fc2 = DynamicLinear(hidden, dim, dyn) if kind.dynamic_mlp and dyn.fc2 else nn.Linear(hidden, dim)
    return Mlp(fc1, fc2)


def create_block(cfg: ArchConfig, index: int, drop_path: float = 0.0) -> Block:
    """Block ``index`` of a backbone: the config's mixer where placement selects it, static elsewhere."""
    kind, _ = MIXERS.parse(cfg.mixer if cfg.uses_mixer(index) else "static")
    branches, _ = DROP_PATH_BRANCHES.parse(cfg.drop_path_branches)
    mixer = kind.build(cfg.embed_dim, cfg.kernel_size, cfg.num_heads, cfg.dynamic)
    return Block(
        cfg.embed_dim,
        mixer,
        _mlp(cfg, kind),
        stream_norm=kind.stream_norm,
        mixer_norm=kind.pre_norm,
        drop_path=drop_path,
        drop_path_branches=branches,
    )
