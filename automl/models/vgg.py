"""A small VGG-style net (conv-BN-ReLU stacks, max-pooling, two FC layers) for 28-32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

VGG8_CFG = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class VGG(nn.Module):
    def __init__(self, cfg=VGG8_CFG, in_channels: int = 3, num_classes: int = 10, hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(c * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg8(in_channels: int = 3, num_classes: int = 10) -> VGG:
    return VGG(VGG8_CFG, in_channels, num_classes)
