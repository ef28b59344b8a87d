"""A small vision transformer: patch embedding, pre-norm blocks of multi-head attention + MLP.

Attention is written with separate q/k/v/proj Linear layers (not nn.MultiheadAttention's fused
weight) so each projection is a prunable layer of its own; the `Attention` module marks them with
`compress_kind = "attention"` so introspection reports them as attention projections.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    compress_kind = "attention"

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, t, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, patch: int = 4,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        n_tokens = ((image_size + patch - 1) // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> VisionTransformer:
    return VisionTransformer(in_channels, num_classes, image_size=image_size)
