"""The three schemes without structure inside the weight: dense, unstructured (magnitude), channel.

`channel` is physical: the engine removes whole output channels with a dependency graph
(`search_spaces.channel`), so its mask is all-ones and its density 1 on the *already shrunk* layer.
"""

from __future__ import annotations

import torch

from search_spaces.schemes.base import PruningScheme, round_half_up


class DenseScheme(PruningScheme):
    name = "dense"

    def mask(self, weight: torch.Tensor, decision) -> torch.Tensor:
        return torch.ones_like(weight, dtype=torch.bool)

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        return 1.0


class UnstructuredScheme(PruningScheme):
    """Zero the round(numel * sparsity) smallest-magnitude weights of the layer (ties broken by index)."""

    name = "unstructured"

    def mask(self, weight: torch.Tensor, decision) -> torch.Tensor:
        flat = weight.detach().abs().flatten()
        k = round_half_up(flat.numel() * decision.sparsity)
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            order = torch.argsort(flat, stable=True)
            keep[order[:k]] = False
        return keep.view_as(weight)

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        total = out_channels * gemm_cols
        return (total - round_half_up(total * decision.sparsity)) / total


class ChannelScheme(PruningScheme):
    """Physical filter pruning; the mask is all-ones because the removed channels are gone."""

    name = "channel"
    physical = True

    def mask(self, weight: torch.Tensor, decision) -> torch.Tensor:
        return torch.ones_like(weight, dtype=torch.bool)

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        return 1.0


