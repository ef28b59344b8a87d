"""Cost formulas on a tiny model counted by hand (see search_spaces/costs.py for the formulas)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automl.policy import CompressionPolicy, LayerDecision
from search_spaces import SearchSpace, apply_policy, cost_report, kept_channels


class Tiny(nn.Module):
    """conv3x3 1->8 (no bias), BN, conv1x1 8->16 (bias), global pool, linear 16->4 (bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    return SearchSpace.from_model(Tiny(), "tiny", (1, 6, 6))


def _policy(**layers: LayerDecision) -> CompressionPolicy:
    return CompressionPolicy("tiny", layers)


def test_dense(space: SearchSpace) -> None:
    r = cost_report(space, space.dense_policy())
    # conv1 6*6*8*1*9 = 2592, conv2 6*6*16*8 = 4608, fc 16*4 = 64
    assert r.dense_macs == r.effective_macs == 7264 and r.mac_ratio == 1.0
    assert r.params == 72 + (128 + 16) + (64 + 4) + 16 == sum(p.numel() for p in Tiny().parameters())
    assert r.size_bytes == 4 * 300


def test_unstructured(space: SearchSpace) -> None:
    r = cost_report(space, _policy(conv2=LayerDecision("unstructured", sparsity=0.5)))
    assert r.effective_macs == 2592 + 2304 + 64 and r.mac_ratio == pytest.approx(4960 / 7264)
    assert r.params == 72 + 64 + 16 + 68 + 16
    # conv2: 64 kept * 4 B + 128-bit bitmap (16 B) + 16 biases * 4 B
    assert r.per_layer["conv2"].size_bytes == 256 + 16 + 64
    assert r.size_bytes == 288 + 336 + 272 + 64


def test_channel_shrinks_the_consumer(space: SearchSpace) -> None:
    r = cost_report(space, _policy(conv1=LayerDecision("channel", sparsity=0.5)))
    assert r.per_layer["conv1"].macs == 36 * 4 * 9 and r.per_layer["conv2"].macs == 36 * 16 * 4
    assert r.dense_macs == 7264 and r.effective_macs == 1296 + 2304 + 64
    assert r.params == 36 + (64 + 16) + 68 + 16
    # And the physically pruned model agrees.
    cm = apply_policy(Tiny(), _policy(conv1=LayerDecision("channel", sparsity=0.5)), torch.randn(1, 1, 6, 6))
    assert cm.model.conv2.in_channels == 4 and cm.report["macs_after"] == 1296 + 2304 + 64


def test_nm_with_8_bit_weights(space: SearchSpace) -> None:
    r = cost_report(space, _policy(conv2=LayerDecision("nm", n=2, m=4, weight_bits=8)))
    # 64 kept weights * 1 B + 64 * 2-bit positions (16 B) + 16 float biases (64 B)
    assert r.per_layer["conv2"].size_bytes == 64 + 16 + 64
    assert r.per_layer["conv2"].effective_macs == 2304


def test_pattern_block1xn_block_punched(space: SearchSpace) -> None:
    r = cost_report(space, _policy(conv1=LayerDecision("pattern", sparsity=0.25)))
    c = r.per_layer["conv1"]  # 8 kernels, 2 removed, 6 kept x 4 entries; index 1 B + ceil(18 bits) 3 B
    assert (c.kept_weights, c.size_bytes) == (24, 24 * 4 + 1 + 3)
    assert c.effective_macs == pytest.approx(2592 * 24 / 72)
    r = cost_report(space, _policy(conv2=LayerDecision("block1xn", n=4, sparsity=0.5)))
    c = r.per_layer["conv2"]  # 4 x 8 = 32 blocks, 16 kept; 32-bit block map = 4 B
    assert (c.kept_weights, c.size_bytes) == (64, 256 + 4 + 64)
    r = cost_report(space, _policy(conv2=LayerDecision("block_punched", block=(4, 4), sparsity=0.5)))
    c = r.per_layer["conv2"]  # 4 block rows x 8 columns = 32 bits = 4 B
    assert (c.kept_weights, c.size_bytes) == (64, 256 + 4 + 64)


def test_kept_channels_rule() -> None:
    assert kept_channels(64, 0.5, 8) == 32
    assert kept_channels(16, 0.3, 8) == 8  # 11.2 -> nearest multiple of 8
    assert kept_channels(16, 0.9, 8) == 8  # never below one aligned step
    assert kept_channels(16, 0.5, 32) == 16  # cannot align above the width: keep all
    assert kept_channels(10, 0.0, 8) == 8  # alignment may prune even at sparsity 0
    assert kept_channels(23, 0.5, 1) == 12
    assert kept_channels(64, 0.5, 8, unit=16) == 32  # attention: 4 heads -> 2
    assert kept_channels(64, 0.95, 1, unit=16) == 16  # at least one head
