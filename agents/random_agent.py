"""`random`: uniform genes per layer, clipped to the budget by the walker — the baseline to beat."""

from __future__ import annotations

from typing import Any

from agents.base import Agent, Budget, CostModel, Objective
from automl.policy import CompressionPolicy


class RandomAgent(Agent):
    """Each layer draws its scheme option, sparsity and bit-widths uniformly; the walker then clips
    them in layer order (as AMC does), so every proposal meets the budget."""

    name = "random"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, *, objective: str | Objective = "accuracy"):
        super().__init__(space, budget, cost_model, seed, objective)

    def propose(self, n: int = 1) -> list[CompressionPolicy]:
        out = []
        for _ in range(n):
            genes = [a.random_gene(self.rng) for a in self.actions]
            out.append(self.finish(self.walker.walk(genes)))
        return out
