"""MobileNetV2 (Sandler et al. 2018) adapted to 28-32 px inputs: stride-1 stem, three downsamplings.

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project) give the search the three layer
kinds that behave most differently on CPUs.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, channels c, repeats n, stride s) as in the paper, strides adapted to small inputs.
CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, 1))
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0,
                 settings=CIFAR_SETTINGS, last_channels: int = 1280):
        super().__init__()
        c = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, c, 3, 1)]
        for t, ch, n, s in settings:
            out = _make_divisible(ch * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.last = _make_divisible(last_channels * max(1.0, width_mult))
        layers.append(conv_bn_relu(c, self.last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2(in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5) -> MobileNetV2:
    """Width 0.5 by default (last conv 1280 kept): trains in minutes on 2 cores at 28 px."""
    return MobileNetV2(in_channels, num_classes, width_mult=width_mult)
