"""Proxy evaluation (apply -> BN recalibration -> val subset) and fine-tuning with masks kept."""

from __future__ import annotations

import copy

import pytest
import torch

from agents.testing import TinyResNet
from automl.evaluation import ProxyEvaluator, finetune_and_test, recalibrate_bn
from automl.training import TrainConfig, evaluate, train_epochs
from search_spaces import SearchSpace


@pytest.fixture(scope="module")
def trained(fmnist_small):
    torch.manual_seed(0)
    model = TinyResNet(1, 10, width=8)
    train_epochs(model, fmnist_small.x_train, fmnist_small.y_train, TrainConfig(epochs=2, batch_size=32, lr=0.05, augment=False))
    model.eval()
    space = SearchSpace.from_model(model, "tiny", fmnist_small.input_shape)
    return model, space


def test_recalibrate_bn_matches_batch_statistics(fmnist_small):
    torch.manual_seed(0)
    model = TinyResNet(1, 10).eval()
    images = fmnist_small.x_train[:256]
    assert recalibrate_bn(model, images, batch_size=64) == 4  # bn1, block.bn1, block.bn2, bn3
    with torch.no_grad():
        stem = model.conv1(images)
    assert torch.allclose(model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-4)
    assert model.bn1.momentum == 0.1 and not model.training  # settings restored


def test_proxy_dense_policy_keeps_accuracy(trained, fmnist_small):
    model, space = trained
    evaluator = ProxyEvaluator(model, fmnist_small, val_images=200, calib_batches=2)
    result = evaluator(space.dense_policy())
    base = evaluate(model, fmnist_small.x_val[:200], fmnist_small.y_val[:200])
    assert base > 0.3  # well above chance (0.1) after a few seconds of training: enough to rank policies
    assert abs(result["accuracy"] - base) < 0.05
    assert evaluator(space.dense_policy())["accuracy"] == result["accuracy"]  # same images, deterministic


def test_proxy_ranks_heavy_pruning_below_light(trained, fmnist_small):
    model, space = trained
    evaluator = ProxyEvaluator(model, fmnist_small, val_images=200, calib_batches=2)
    names = space.layer_names()
    light = space.decode({n: {"scheme": "unstructured", "sparsity": 0.2} for n in names})
    heavy = space.decode({n: {"scheme": "unstructured", "sparsity": 0.9} for n in names})
    assert evaluator(light)["accuracy"] > evaluator(heavy)["accuracy"] + 0.1
    # the base model is untouched by evaluation
    assert torch.equal(model.conv1.weight, evaluator.base_model.conv1.weight)


def test_bn_recalibration_helps_channel_pruning(trained, fmnist_small):
    model, space = trained
    groups = [n for n in space.layer_names() if "channel" in space.choices(n).schemes]
    policy = space.decode({n: {"scheme": "channel", "sparsity": 0.5} for n in groups})
    with_recal = ProxyEvaluator(model, fmnist_small, val_images=300, calib_batches=4)(policy)["accuracy"]
    without = ProxyEvaluator(model, fmnist_small, val_images=300, calib_batches=4, recalibrate=False)(policy)
    assert with_recal >= without["accuracy"] - 0.02


def test_finetune_keeps_masks_and_recovers(trained, fmnist_small):
    model, space = trained
    policy = space.decode({n: {"scheme": "unstructured", "sparsity": 0.8} for n in space.layer_names()})
    before_weights = copy.deepcopy(model.state_dict())
    result = finetune_and_test(model, policy, fmnist_small, epochs=1, lr=0.02)
    assert result["masks_kept"] == 1.0
    assert result["test_accuracy"] >= result["test_accuracy_before"] - 0.02
    assert all(torch.equal(before_weights[k], v) for k, v in model.state_dict().items())


def test_proxy_finetune_steps_lift_deep_pruning_and_keep_masks(trained, fmnist_small):
    """A few SGD steps before scoring: deep pruning scores well above the BN-only proxy, masks stay zero,
    the base model is untouched and the score is deterministic (the same images for every candidate)."""
    model, space = trained
    names = space.layer_names()
    policy = space.decode({n: {"scheme": "unstructured", "sparsity": 0.7} for n in names})
    plain = ProxyEvaluator(model, fmnist_small, val_images=300, calib_batches=2)(policy)["accuracy"]
    evaluator = ProxyEvaluator(model, fmnist_small, val_images=300, calib_batches=2, finetune_steps=20,
                               finetune_lr=0.05)
    tuned = evaluator(policy)["accuracy"]
    assert tuned > plain + 0.05
    assert evaluator(policy)["accuracy"] == tuned
    compressed = evaluator.prepare(policy)  # what __call__ scores: trained, masks re-applied
    for layer, mask in compressed.masks.items():
        assert bool((compressed.model.get_submodule(layer).weight[mask == 0] == 0).all())
    assert torch.equal(model.conv1.weight, evaluator.base_model.conv1.weight)
    with pytest.raises(ValueError, match="finetune_steps"):
        ProxyEvaluator(model, fmnist_small, finetune_steps=-1)
