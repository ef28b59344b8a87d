"""apply_policy on real zoo models: physical channel removal, analytic shapes, masks, rearrangement."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from automl.models import ZOO, build_model, count_macs
from automl.policy import CompressionPolicy, LayerDecision
from search_spaces import SearchSpace, apply_policy, rearrange_filters

SHAPE = (1, 28, 28)


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))


def _real_shapes(model: nn.Module, names) -> dict[str, tuple[int, int, int]]:
    out = {}
    for name in names:
        m = model.get_submodule(name)
        out[name] = ((m.in_channels, m.out_channels, m.groups) if isinstance(m, nn.Conv2d)
                     else (m.in_features, m.out_features, 1))
    return out


@pytest.mark.parametrize("name", list(ZOO))
def test_channel_pruning_every_zoo_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 28)
    space = SearchSpace.from_model(model, name, SHAPE)
    policy = CompressionPolicy(name, {lc.layer.name: LayerDecision("channel", sparsity=0.5, align=8)
                                      for lc in space.layers if "channel" in lc.schemes})
    assert policy.layers, f"{name} has no channel-prunable layer"
    cm = apply_policy(model, policy, _x())
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in cm.model.parameters())
    assert after < 0.7 * before  # physically smaller, not masked
    cm.model.eval()
    model.eval()
    with torch.no_grad():
        y = cm.model(_x(3))
    assert y.shape == model(_x(3)).shape == (3, 10) and torch.isfinite(y).all()
    assert cm.report["macs_after"] < 0.6 * cm.report["macs_before"]
    shapes = {cl.name: (cl.in_channels, cl.out_channels, cl.groups) for cl in space.compressed_layers(policy)}
    assert _real_shapes(cm.model, shapes) == shapes
    analytic = {cl.name: cl.macs for cl in space.compressed_layers(policy)}
    assert count_macs(cm.model, SHAPE).per_layer == analytic
    if name == "vit_tiny":
        attn = cm.model.blocks[0].attn
        assert attn.heads == 2 and attn.q.out_features == 2 * attn.head_dim  # whole heads removed
        assert cm.model.blocks[0].mlp[0].out_features == 64


def test_macs_match_hand_count_on_one_layer() -> None:
    model = build_model("resnet20", 1, 10, 28)
    policy = CompressionPolicy("resnet20", {"conv1": LayerDecision("channel", sparsity=0.5, align=8),
                                            "layer1.0.conv1": LayerDecision("channel", sparsity=0.25, align=4)})
    cm = apply_policy(model, policy, _x())
    conv = cm.model.layer1[0].conv1
    # Stem group 16 -> 8 channels (input), own output 16 -> 12; 3x3 kernel, 28x28 output.
    assert (conv.in_channels, conv.out_channels) == (8, 12)
    hand = 28 * 28 * 12 * 8 * 3 * 3
    assert count_macs(cm.model, SHAPE).per_layer["layer1.0.conv1"] == hand == 677_376
    assert count_macs(model, SHAPE).per_layer["layer1.0.conv1"] == 28 * 28 * 16 * 16 * 9


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_compressed_layers_equal_physical_shapes_for_random_policies(name: str) -> None:
    model = build_model(name, 1, 10, 28)
    space = SearchSpace.from_model(model, name, SHAPE)
    rng = random.Random(1)
    for _ in range(3):
        choices = {}
        for lc in space.layers:
            if "channel" in lc.schemes and rng.random() < 0.6:
                choices[lc.layer.name] = {"scheme": "channel", "sparsity": rng.choice(lc.sparsities),
                                          "align": rng.choice(lc.aligns)}
            elif "unstructured" in lc.schemes and rng.random() < 0.3:
                choices[lc.layer.name] = {"scheme": "unstructured", "sparsity": rng.choice(lc.sparsities)}
        policy = space.decode(choices)
        cm = apply_policy(model, policy, _x())
        layers = space.compressed_layers(policy)
        shapes = {cl.name: (cl.in_channels, cl.out_channels, cl.groups) for cl in layers}
        assert _real_shapes(cm.model, shapes) == shapes
        for cl in layers:  # analytic density == the weights' measured density
            if cl.scheme == "unstructured":
                w = cm.model.get_submodule(cl.name).weight
                assert float((w != 0).sum()) / w.numel() == pytest.approx(cl.density, abs=1e-9)


def test_masks_survive_optimizer_steps() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 1, 10, 28)
    policy = CompressionPolicy("resnet20", {
        "layer1.0.conv1": LayerDecision("unstructured", sparsity=0.7),
        "layer1.1.conv1": LayerDecision("nm", n=2, m=4),
        "layer1.2.conv1": LayerDecision("block1xn", n=4, sparsity=0.5),
        "layer2.0.conv1": LayerDecision("pattern", sparsity=0.3),
        "layer2.0.shortcut.0": LayerDecision("block_punched", block=(8, 8), sparsity=0.5),
        "layer2.1.conv1": LayerDecision("channel", sparsity=0.5, align=8),
    })
    cm = apply_policy(model, policy, _x())
    assert set(cm.masks) == set(policy.layers) - {"layer2.1.conv1"}
    opt = torch.optim.SGD(cm.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    cm.model.train()
    for _ in range(5):
        x, y = torch.randn(8, *SHAPE, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(cm.model(x), y).backward()
        opt.step()
        cm.reapply_masks()
    for name, mask in cm.masks.items():
        w = cm.model.get_submodule(name).weight
        assert bool((w[~mask] == 0).all()), name
        assert bool((w[mask] != 0).any()), name  # the kept weights did train
    assert cm.sparsity()["layer1.0.conv1"] >= 0.7 - 1e-3
    assert cm.report["rearranged"]["layer1.2.conv1"] == "rearranged"


@pytest.mark.parametrize("name", ["resnet20", "vgg8", "mobilenetv2"])
def test_rearrangement_alone_preserves_the_function(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 28).eval()
    for m in model.modules():  # non-trivial BN statistics so a wrong permutation would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = _x(4)
    with torch.no_grad():
        before = model(x)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    status = rearrange_filters(model, x[:1], names)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert any(s == "rearranged" for s in status.values())
    if name == "resnet20":
        assert status["layer1.0.conv1"] == "rearranged"
        assert status["layer1.0.conv2"].startswith("skipped")  # residual-coupled outputs
    if name == "mobilenetv2":
        assert status["features.1.conv.0.0"].startswith("skipped")  # feeds a depthwise conv


def test_channel_default_never_prunes_the_classifier() -> None:
    model = build_model("vgg8", 1, 10, 28)
    cm = apply_policy(model, CompressionPolicy("vgg8", default=LayerDecision("channel", sparsity=0.5)), _x())
    assert cm.model.classifier[2].out_features == 10
    assert cm.model.classifier[0].out_features == 128
