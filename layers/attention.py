"""The attention baselines the dynamic layers compete with, on (B, H, W, C) tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _MultiHead(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, W, C) -> q, k, v of shape (B, heads, N, C / heads)."""
        batch, height, width, dim = x.shape
        qkv = self.qkv(x.reshape(batch, height * width, dim))
        qkv = qkv.view(batch, height * width, 3, self.num_heads, dim // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def merge(self, out: Tensor, like: Tensor) -> Tensor:
        """(B, heads, N, C / heads) -> projected (B, H, W, C)."""
        return self.proj(out.transpose(1, 2).reshape(like.shape))


class Attention(_MultiHead):
    """DeiT's softmax self-attention: O(N^2 C), the quadratic reference point."""

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.heads(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v), x)


class LinearAttention(_MultiHead):
    """Kernelised attention with phi = elu + 1 (Katharopoulos et al.): O(N C^2 / heads).

    o_i = phi(q_i)^T S / (phi(q_i)^T z) with S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j).
    """

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.heads(x)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        state = k.transpose(-2, -1) @ v  # (B, heads, d, d)
        normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, heads, N, 1)
        return self.merge((q @ state) / normaliser, x)
