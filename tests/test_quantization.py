"""Fake-quant: 8 bits is nearly free on a trained ResNet-20, 2 bits visibly hurts, STE gradients flow."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from automl.policy import CompressionPolicy, LayerDecision
from automl.training import TrainConfig, evaluate, train_epochs
from search_spaces.quantization import (
    FakeQuantConv2d,
    QuantizationError,
    attach_fake_quant,
    fake_quant_weight,
    quantized_layers,
    strip_fake_quant,
)


def _bits_policy(w: int | None, a: int | None) -> CompressionPolicy:
    return CompressionPolicy("resnet20", default=LayerDecision(weight_bits=w, act_bits=a))


def test_8bit_changes_accuracy_by_less_than_one_point(trained_resnet20, fmnist_small):
    s = fmnist_small
    base = evaluate(trained_resnet20, s.x_test, s.y_test)
    assert base > 0.6, f"the tiny base model should have learned something, got {base}"
    q = attach_fake_quant(copy.deepcopy(trained_resnet20), _bits_policy(8, 8), s.x_train[:256])
    assert len(quantized_layers(q)) == 22  # 19 3x3 convs + 2 shortcut 1x1 convs + fc
    acc8 = evaluate(q, s.x_test, s.y_test)
    assert abs(acc8 - base) < 0.01, (base, acc8)
    # the rounding really happens: logits differ from the float model's
    with torch.no_grad():
        assert not torch.allclose(q(s.x_test[:8]), trained_resnet20(s.x_test[:8]))


def test_2bit_visibly_hurts(trained_resnet20, fmnist_small):
    s = fmnist_small
    base = evaluate(trained_resnet20, s.x_test, s.y_test)
    q = attach_fake_quant(copy.deepcopy(trained_resnet20), _bits_policy(2, 2), s.x_train[:256])
    assert evaluate(q, s.x_test, s.y_test) < base - 0.1


def test_percentile_observer_and_weight_only(trained_resnet20, fmnist_small):
    s = fmnist_small
    base = evaluate(trained_resnet20, s.x_test, s.y_test)
    q = attach_fake_quant(copy.deepcopy(trained_resnet20), _bits_policy(8, 8), s.x_train[:256],
                          observer="percentile")
    assert abs(evaluate(q, s.x_test, s.y_test) - base) < 0.02
    w_only = attach_fake_quant(copy.deepcopy(trained_resnet20), _bits_policy(6, None), None)  # no calib needed
    assert all(v["act_bits"] is None for v in quantized_layers(w_only).values())


def test_weight_grid_per_channel_and_zeros_kept():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    w[w.abs() < 0.5] = 0.0  # a pruning mask
    for bits in (2, 4, 8):
        q = fake_quant_weight(w, bits)
        assert torch.equal(q[w == 0], torch.zeros_like(q[w == 0]))
        qmax = 2 ** (bits - 1) - 1
        for c in range(8):
            scale = w[c].abs().max() / qmax
            levels = torch.round(q[c] / scale)
            assert levels.abs().max() <= qmax
            assert torch.allclose(levels * scale, q[c], atol=1e-5)
        assert len(torch.unique(q[0])) <= 2 * qmax + 1


def test_ste_gradients_flow_and_masks_survive_finetune(fmnist_small):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    mask = (torch.rand_like(model[0].weight) > 0.5).float()
    with torch.no_grad():
        model[0].weight.mul_(mask)
    policy = CompressionPolicy("toy", default=LayerDecision(weight_bits=4, act_bits=4))
    attach_fake_quant(model, policy, fmnist_small.x_train[:64])
    assert isinstance(model[0], FakeQuantConv2d)
    x, y = fmnist_small.x_train[:32], fmnist_small.y_train[:32]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for p in (model[0].weight, model[3].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # fine-tune with the mask re-applied after each step (what CompressedModel.reapply_masks does)
    before = copy.deepcopy(model.state_dict())

    def remask():
        with torch.no_grad():
            model[0].weight.mul_(mask)

    train_epochs(model, fmnist_small.x_train[:256], fmnist_small.y_train[:256],
                 TrainConfig(epochs=1, batch_size=32, lr=0.01, augment=False), after_step=remask)
    assert not torch.equal(before["3.weight"], model[3].weight)
    assert torch.all(model[0].weight[mask == 0] == 0)
    with torch.no_grad():
        qw = fake_quant_weight(model[0].weight, 4)
    assert torch.all(qw[mask == 0] == 0)


def test_strip_restores_float_modules_and_bake(trained_resnet20, fmnist_small):
    q = attach_fake_quant(copy.deepcopy(trained_resnet20), _bits_policy(4, None), None)
    expected = q(fmnist_small.x_test[:4]).detach()
    baked = strip_fake_quant(q, bake_weights=True)
    assert type(baked.conv1) is nn.Conv2d and not quantized_layers(baked)
    assert torch.allclose(baked(fmnist_small.x_test[:4]), expected, atol=1e-5)
    assert all("act_fake_quant" not in k for k in baked.state_dict())


def test_clear_errors(trained_resnet20):
    model = copy.deepcopy(trained_resnet20)
    with pytest.raises(QuantizationError, match="calibration data"):
        attach_fake_quant(model, _bits_policy(8, 8), None)
    bad = CompressionPolicy("resnet20", layers={"layer9.conv": LayerDecision(weight_bits=8)})
    with pytest.raises(QuantizationError, match="layer9.conv"):
        attach_fake_quant(model, bad, None)
