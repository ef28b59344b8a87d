"""Small, real fixtures for testing agents (as `optuna.testing`): a tiny residual net, its space, and
cheap objectives with a known optimum. Everything here is picklable and runs in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from automl.policy import CompressionPolicy

TINY_INPUT = (1, 12, 12)


class TinyBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class TinyResNet(nn.Module):
    """stem 3x3 -> one residual block -> 1x1 conv (stride 2) -> pool -> fc: every layer kind a CNN has."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block = TinyBlock(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 1, 2, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.block(x)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


TINY_NAME = "agents.testing:tiny_model"  # a name the zoo resolves, so AGMC can rebuild the graph


def tiny_model(in_channels: int = 1, num_classes: int = 10, seed: int = 0) -> TinyResNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyResNet(in_channels, num_classes).eval()


def tiny_space(model: nn.Module | None = None, **config: Any) -> Any:
    """The space of `TinyResNet`; `config` overrides `SpaceConfig` fields."""
    from search_spaces import SearchSpace, SpaceConfig

    return SearchSpace.from_model(model or tiny_model(), TINY_NAME, TINY_INPUT, SpaceConfig(**config))


def unstructured_only(**extra: Any) -> dict[str, Any]:
    """A space config offering only dense / unstructured (a clean playground for learning tests)."""
    kinds = ("conv3x3", "conv1x1", "conv", "depthwise", "linear", "attention")
    return {"schemes": {k: ("unstructured",) for k in kinds}, "weight_bits": (None,), "act_bits": (None,),
            **extra}


def decided_sparsity(policy: CompressionPolicy, layer: str) -> float:
    return 1.0 - policy.decision(layer).weight_density


class TargetSparsity:
    """A cheap "accuracy": 1 - mean |sparsity_i - target_i| over layers. Known optimum: the targets."""

    def __init__(self, layers: Sequence[str], targets: Sequence[float]):
        if len(layers) != len(targets):
            raise ValueError("one target per layer")
        self.layers, self.targets = list(layers), [float(t) for t in targets]

    def __call__(self, policy: CompressionPolicy) -> float:
        err = sum(abs(decided_sparsity(policy, n) - t) for n, t in zip(self.layers, self.targets, strict=True))
        return 1.0 - err / len(self.layers)


class StepLatency:
    """A deterministic latency stand-in for budget tests: ms = sum over layers of effective MACs / 1e5,
    with an alignment penalty for channel counts that are not multiples of 8 (as on this CPU)."""

    def __init__(self, space: Any):
        self.space = space

    def __call__(self, policy: CompressionPolicy) -> float:
        total = 0.0
        for cl in self.space.compressed_layers(policy):
            penalty = 1.0 if cl.out_channels % 8 == 0 else 1.3
            total += cl.effective_macs * penalty
        return total / 1e5
