"""The zoo: every model's forward pass at both input sizes, layer introspection, MACs checked against hand
counts, and user models named as package.module:factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automl.models import (
    ZOO,
    ModelError,
    build_model,
    count_macs,
    layer_kind,
    prunable_layers,
    resolve_factory,
)
from automl.policy import LayerShape

INPUTS = {"fmnist": (1, 28, 28), "cifar": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("size", sorted(INPUTS))
def test_every_zoo_model_runs_at_both_input_sizes(name, size):
    c, h, w = INPUTS[size]
    torch.manual_seed(0)
    model = build_model(name, in_channels=c, num_classes=7, image_size=h).eval()
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    report = count_macs(model, (c, h, w))
    layers = prunable_layers(model, (c, h, w))
    assert report.total == sum(l.macs for l in layers) + report.attention_matmuls > 0
    assert report.params == sum(p.numel() for p in model.parameters())
    # Every Conv2d / Linear is reported once, in execution order, as a LayerShape the policy can check.
    n_modules = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(layers) == n_modules
    assert [l.index for l in layers] == list(range(len(layers)))
    assert all(isinstance(l.shape(), LayerShape) and l.kind is not None for l in layers)
    assert dict(model.named_modules()).keys() >= {l.name for l in layers}


def macs_by_name(model: nn.Module, shape) -> dict[str, object]:
    return {l.name: l for l in prunable_layers(model, shape)}


def test_conv3x3_and_conv1x1_macs_by_hand():
    layers = macs_by_name(build_model("resnet20", 1, 10, 28), (1, 28, 28))
    stem = layers["conv1"]
    assert stem.kind == "conv3x3" and stem.output_hw == (28, 28)
    assert stem.macs == 28 * 28 * 16 * 1 * 3 * 3
    # First block of stage 2: a stride-2 3x3 conv and the 1x1 option-B shortcut, both to 14x14.
    conv = layers["layer2.0.conv1"]
    assert conv.stride == (2, 2) and conv.output_hw == (14, 14) and conv.input_hw == (28, 28)
    assert conv.macs == 14 * 14 * 32 * 16 * 9
    shortcut = layers["layer2.0.shortcut.0"]
    assert shortcut.kind == "conv1x1" and shortcut.macs == 14 * 14 * 32 * 16
    fc = layers["fc"]
    assert fc.kind == "linear" and fc.tokens == 1 and fc.macs == 64 * 10


def test_resnet20_total_macs_by_hand():
    # CIFAR ResNet-20 at 32x32: stem, 3 stages of 6 convs, two 1x1 shortcuts, FC.
    hand = (32 * 32 * 16 * 3 * 9
            + 6 * 32 * 32 * 16 * 16 * 9
            + 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9 + 16 * 16 * 32 * 16
            + 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9 + 8 * 8 * 64 * 32
            + 64 * 10)
    report = count_macs(build_model("resnet20", 3, 10, 32), (3, 32, 32))
    assert report.total == hand
    assert report.attention_matmuls == 0
    assert len(report.per_layer) == 19 + 2 + 1


def test_depthwise_and_pointwise_macs_by_hand():
    layers = macs_by_name(build_model("mobilenetv2", 1, 10, 28), (1, 28, 28))
    dw = layers["features.1.conv.0.0"]  # first inverted residual (expansion 1): 3x3 depthwise on 16 channels
    assert dw.kind == "depthwise" and dw.groups == 16 == dw.in_channels == dw.out_channels
    assert dw.macs == 28 * 28 * 16 * 1 * 9
    assert dw.shape().gemm_cols == 9
    project = layers["features.1.conv.1"]
    assert project.kind == "conv1x1" and project.macs == 28 * 28 * 8 * 16
    expand = layers["features.2.conv.0.0"]  # expansion 6: 8 -> 48
    assert expand.kind == "conv1x1" and expand.macs == 28 * 28 * 48 * 8
    assert layers["classifier"].macs == 1280 * 10


def test_transformer_linear_and_attention_macs_by_hand():
    model = build_model("vit_tiny", 1, 10, 28)
    layers = macs_by_name(model, (1, 28, 28))
    tokens = (28 // 4) ** 2 + 1  # 7x7 patches + class token
    patch = layers["patch_embed"]
    assert patch.kind == "conv" and patch.macs == 7 * 7 * 64 * 1 * 4 * 4
    for proj in ("q", "k", "v", "proj"):
        layer = layers[f"blocks.0.attn.{proj}"]
        assert layer.kind == "attention" and layer.tokens == tokens and layer.macs == tokens * 64 * 64
    mlp = layers["blocks.0.mlp.0"]
    assert mlp.kind == "linear" and mlp.macs == tokens * 64 * 128
    assert layers["head"].tokens == 1 and layers["head"].macs == 64 * 10
    report = count_macs(model, (1, 28, 28))
    # q @ k^T and attn @ v: 2 * tokens^2 * dim per block, 4 blocks.
    assert report.attention_matmuls == 4 * 2 * tokens * tokens * 64
    assert report.total == sum(report.per_layer.values()) + report.attention_matmuls


def test_layer_kind_classification():
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=8), None) == "depthwise"
    assert layer_kind(nn.Conv2d(8, 16, 3, groups=8), None) == "conv3x3"  # grouped, not depthwise
    assert layer_kind(nn.Conv2d(8, 16, 5), None) == "conv"
    assert layer_kind(nn.Conv2d(8, 16, 1), None) == "conv1x1"
    assert layer_kind(nn.Linear(4, 4), nn.Sequential()) == "linear"
    assert layer_kind(nn.BatchNorm2d(4), None) is None


def test_introspection_restores_training_mode():
    model = build_model("vgg8", 1, 10, 28).train()
    prunable_layers(model, (1, 28, 28))
    count_macs(model, (1, 28, 28))
    assert model.training


# ------------------------------------------------------------------------------ user factories
class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def tiny_factory(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return TinyNet(in_channels, num_classes)


def kwargs_factory(**kwargs) -> nn.Module:
    assert kwargs == {"in_channels": 1, "num_classes": 5, "image_size": 28}
    return TinyNet(kwargs["in_channels"], kwargs["num_classes"])


def not_a_module(in_channels: int = 3) -> str:
    return "nope"


def broken_factory(in_channels: int = 3) -> nn.Module:
    raise RuntimeError("boom")


NOT_CALLABLE = 3
THIS = __name__  # the module name pytest imported this file under


def test_user_factory_by_module_path():
    model = build_model(f"{THIS}:tiny_factory", in_channels=1, num_classes=5, image_size=28)
    assert isinstance(model, TinyNet) and model.fc.out_features == 5 and model.conv.in_channels == 1
    assert resolve_factory(f"{THIS}:tiny_factory") is tiny_factory
    assert isinstance(build_model(f"{THIS}:kwargs_factory", 1, 5, 28), TinyNet)
    assert [l.name for l in prunable_layers(model, (1, 28, 28))] == ["conv", "fc"]


@pytest.mark.parametrize("name, message", [
    ("resnet21", "unknown model 'resnet21'; zoo models: resnet20"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    (f"{THIS}:missing", "has no callable 'missing'"),
    (f"{THIS}:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
    (f"{THIS}:not_a_module", "returned str, not a torch.nn.Module"),
    (f"{THIS}:broken_factory", "RuntimeError: boom"),
    (":factory", "package.module:factory"),
])
def test_model_errors_are_clear(name, message):
    with pytest.raises(ModelError) as exc:
        build_model(name, 1, 10, 28)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_user_module_found_in_working_directory(tmp_path, monkeypatch):
    """The `automl` console script does not put the working directory on sys.path; the zoo falls back to it."""
    import sys

    (tmp_path / "my_models_h1.py").write_text(
        "from torch import nn\n\ndef net(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = build_model("my_models_h1:net", 1, 3, 28)
    assert isinstance(model, nn.Sequential)
    sys.modules.pop("my_models_h1", None)
