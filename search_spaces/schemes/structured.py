"""Schemes with structure inside the weight: N:M, 1xN blocks, kernel patterns, block-punched.

Each keeps an exact number of structural units so `density` is a closed formula of the shape and
the decision (the cost model relies on that), and each has an invariant the conformance suite proves:

* nm: every group of m consecutive GEMM columns of a row keeps exactly n weights (the n largest).
* block1xn: blocks of n consecutive output kernels at one input channel are kept or removed whole;
  round(blocks * sparsity) blocks with the smallest L1 norm go.
* pattern: every kept 3x3 kernel keeps exactly one pattern of `PATTERN_LIBRARY` (the one that keeps
  the most energy); round(kernels * sparsity) whole kernels with the least kept energy are removed
  (connectivity pruning).
* block_punched: the GEMM matrix is tiled into (rows, cols) blocks; inside a block the same
  round(cols * sparsity) columns (smallest L2 norm over the block's rows) are punched in every row.
"""

from __future__ import annotations

import torch

from automl.policy import LayerDecision, LayerShape
from search_spaces.schemes.base import PruningScheme, SchemeError, gemm_view, round_half_up

CONV_LIKE = frozenset({"conv3x3", "conv1x1", "conv", "linear", "attention"})


class NMScheme(PruningScheme):
    """At most n non-zeros in every m consecutive weights along the input (GEMM column) dimension.

    Not offered for depthwise convs: their GEMM rows hold 9 weights, too few for N:M kernels.
    """

    name = "nm"
    supported_kinds = CONV_LIKE

    def mask(self, weight: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        n, m = decision.n, decision.m
        g = gemm_view(weight.detach().abs())
        groups = g.reshape(g.shape[0], g.shape[1] // m, m)
        top = torch.topk(groups, n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return keep.reshape(weight.shape)

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        return decision.n / decision.m


class Block1xNScheme(PruningScheme):
    """1xN blocks: n consecutive output kernels at one input channel, kept or pruned together.

    The filter rearrangement that makes similar kernels neighbours is a model-level step
    (`search_spaces.rearrange`), applied by the engine before this mask. Not for depthwise convs,
    whose output kernels each see a different input channel (a 1xN block would not exist).
    """

    name = "block1xn"
    supported_kinds = CONV_LIKE

    def mask(self, weight: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        n = decision.n
        out, in_g = weight.shape[0], weight.shape[1]
        blocks = weight.detach().abs().reshape(out // n, n, in_g, -1)
        score = blocks.sum(dim=(1, 3)).flatten()  # (out/n * in_g,)
        k = round_half_up(score.numel() * decision.sparsity)
        keep = torch.ones_like(score, dtype=torch.bool)
        if k > 0:
            keep[torch.argsort(score, stable=True)[:k]] = False
        keep = keep.view(out // n, 1, in_g, 1).expand(out // n, n, in_g, blocks.shape[-1])
        return keep.reshape(weight.shape).clone()

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        in_g = gemm_cols // (kernel_size[0] * kernel_size[1])
        total = (out_channels // decision.n) * in_g
        return (total - round_half_up(total * decision.sparsity)) / total


def _pattern(cells: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    flat = [0] * 9
    for r, c in cells:
        flat[3 * r + c] = 1
    return tuple(flat)


# The 8 four-entry patterns most used by the pattern-pruning papers (PatDNN / PCONV): all keep the
# centre; four keep the centre and three of its orthogonal neighbours ("T" shapes), four keep the
# centre, two orthogonal neighbours and the corner between them (2x2 squares at each corner).
PATTERN_LIBRARY: tuple[tuple[int, ...], ...] = (
    _pattern(((0, 1), (1, 0), (1, 1), (1, 2))),
    _pattern(((1, 0), (1, 1), (1, 2), (2, 1))),
    _pattern(((0, 1), (1, 1), (1, 2), (2, 1))),
    _pattern(((0, 1), (1, 0), (1, 1), (2, 1))),
    _pattern(((0, 0), (0, 1), (1, 0), (1, 1))),
    _pattern(((0, 1), (0, 2), (1, 1), (1, 2))),
    _pattern(((1, 0), (1, 1), (2, 0), (2, 1))),
    _pattern(((1, 1), (1, 2), (2, 1), (2, 2))),
)
PATTERN_SIZE = 4


class PatternScheme(PruningScheme):
    """Kernel-pattern pruning plus connectivity pruning, for 3x3 convs (not depthwise: one kernel
    per channel leaves connectivity pruning nothing to choose between)."""

    name = "pattern"
    supported_kinds = frozenset({"conv3x3"})

    def _check_params(self, layer: LayerShape, decision: LayerDecision) -> None:
        if decision.pattern_size != PATTERN_SIZE:
            raise SchemeError(f"the pattern library holds {PATTERN_SIZE}-entry patterns; got pattern_size="
                              f"{decision.pattern_size}", layer.name, "pattern_size")

    def mask(self, weight: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        lib = torch.tensor(PATTERN_LIBRARY, dtype=weight.dtype)  # (8, 9)
        energy = weight.detach().reshape(-1, 9).pow(2)  # (K, 9)
        kept_energy = energy @ lib.T  # (K, 8)
        best_energy, best = kept_energy.max(dim=1)
        keep = lib[best].bool()  # (K, 9)
        k = round_half_up(keep.shape[0] * decision.sparsity)
        if k > 0:
            keep[torch.argsort(best_energy, stable=True)[:k]] = False
        return keep.reshape(weight.shape)

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        kernels = out_channels * gemm_cols // 9
        kept = kernels - round_half_up(kernels * decision.sparsity)
        return kept * PATTERN_SIZE / (kernels * 9)


class BlockPunchedScheme(PruningScheme):
    """Block-punched: same columns pruned in every row of a (rows, cols) block of the GEMM matrix."""

    name = "block_punched"
    supported_kinds = CONV_LIKE

    def mask(self, weight: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        r, c = decision.block
        g = gemm_view(weight.detach())
        out, cols = g.shape
        blocks = g.reshape(out // r, r, cols // c, c)
        col_energy = blocks.pow(2).sum(dim=1)  # (out/r, cols/c, c)
        k = round_half_up(c * decision.sparsity)
        keep = torch.ones_like(col_energy, dtype=torch.bool)
        if k > 0:
            order = torch.argsort(col_energy, dim=-1, stable=True)[..., :k]
            keep.scatter_(-1, order, False)
        keep = keep.unsqueeze(1).expand(out // r, r, cols // c, c)
        return keep.reshape(weight.shape).clone()

    def density(self, out_channels, gemm_cols, kernel_size, decision) -> float:
        c = decision.block[1]
        return (c - round_half_up(c * decision.sparsity)) / c
