"""The isotropic backbone built from one ArchConfig.

No position embedding and no class token: the depthwise convs give position, the head averages
tokens, so the same weights run at any input resolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import create_block, layer_norm
from .config import ArchConfig


class DynamicBackbone(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.stem_norm = layer_norm(cfg.embed_dim)
        # Stochastic depth grows linearly with depth (plain floats: this also runs on the meta device).
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*(create_block(cfg, i, rates[i]) for i in range(cfg.depth)))
        self.head_norm = layer_norm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, in_chans, H, W) -> tokens (B, H / p, W / p, C)."""
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        return self.blocks(self.stem_norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_norm(x).mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # timm's classifier protocol
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: these models average the tokens before the head")
        self.num_classes = num_classes
        self.cfg = self.cfg.replace(num_classes=num_classes)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)


def _init_weights(module: nn.Module) -> None:
    """Linear: truncated normal 0.02, zero bias; LayerNorm: 1 and 0; convs keep PyTorch's default.

    The dynamic layers initialise their own static weights (W0, U, V, K0, biases) on creation.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
