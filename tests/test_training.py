"""Base training and the checkpoint cache, on real (small, seeded) Fashion-MNIST data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from automl.training import (
    CheckpointKey,
    TrainConfig,
    evaluate,
    load_checkpoint,
    onednn_1x1_hazards,
    train_config_for,
    train_epochs,
    train_or_load,
)

ROOT = Path(__file__).resolve().parents[1]


def small_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """Small enough that a couple of epochs on 1,800 images take a few seconds on one core."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, num_classes))


SMALL = f"{__name__}:small_cnn"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_beats_chance_and_reports_progress(fmnist_small, tmp_path):
    messages: list[str] = []
    untrained = small_cnn()
    chance_like = evaluate(untrained, fmnist_small.x_test, fmnist_small.y_test)
    ckpt = train_or_load(SMALL, epochs=3, limit=2000, splits=fmnist_small, cache_dir=tmp_path,
                         progress=messages.append)
    meta = ckpt.meta
    assert not ckpt.reused and ckpt.path.is_file()
    assert meta["test_acc"] > 0.5 > chance_like + 0.1, (meta["test_acc"], chance_like)
    assert 0.5 < meta["val_acc"] <= 1.0
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["history"][2]["loss"] < meta["history"][0]["loss"]
    assert meta["train_seconds"] > 0 and meta["limit"] == 2000
    assert any("epoch 1/3" in m for m in messages) and any("epoch 3/3" in m and "train acc" in m for m in messages)
    assert any(m.startswith("training ") and "1800 train / 200 val / 500 test" in m for m in messages)
    # The model came back in eval mode and scores what the metadata says.
    assert evaluate(ckpt.model, fmnist_small.x_test, fmnist_small.y_test) == pytest.approx(meta["test_acc"])


def test_checkpoint_cache_reuse_and_new_key(fmnist_small, tmp_path):
    first = train_or_load(SMALL, epochs=1, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    second = train_or_load(SMALL, epochs=1, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    assert not first.reused and second.reused
    assert second.path == first.path
    assert same_weights(first.model, second.model)
    assert second.meta["test_acc"] == first.meta["test_acc"]
    assert not second.model.training
    # A different number of epochs is a different checkpoint.
    other = train_or_load(SMALL, epochs=2, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    assert not other.reused and other.path != first.path
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # force retrains in place; with the same seed (one thread) the weights come out the same.
    forced = train_or_load(SMALL, epochs=1, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None,
                           force=True)
    assert not forced.reused and forced.path == first.path
    assert same_weights(forced.model, first.model)
    assert not list(tmp_path.glob("*.tmp"))


def test_unusable_checkpoint_is_retrained(fmnist_small, tmp_path):
    first = train_or_load(SMALL, epochs=0, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    first.path.write_bytes(b"not a checkpoint")
    messages: list[str] = []
    again = train_or_load(SMALL, epochs=0, limit=2000, splits=fmnist_small, cache_dir=tmp_path,
                          progress=messages.append)
    assert not again.reused and any("unusable" in m for m in messages)
    assert load_checkpoint(again.path).meta["model"] == SMALL


def test_load_checkpoint_rebuilds_the_model(fmnist_small, tmp_path):
    ckpt = train_or_load(SMALL, epochs=0, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    loaded = load_checkpoint(ckpt.path)
    assert same_weights(loaded.model, ckpt.model)
    assert loaded.meta["in_channels"] == 1 and loaded.meta["image_size"] == 28
    with pytest.raises(FileNotFoundError, match="automl train"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_keeps_the_callers_thread_setting(fmnist_small, tmp_path):
    torch.set_num_threads(1)
    train_or_load(SMALL, epochs=0, limit=2000, splits=fmnist_small, cache_dir=tmp_path / "t", progress=None)
    assert torch.get_num_threads() == 1


def test_checkpoint_key_separates_what_changes_the_weights():
    base = CheckpointKey("resnet20", "fashion-mnist", 0, 5, None, {"lr": 0.05})
    names = {base.filename(),
             CheckpointKey("resnet20", "fashion-mnist", 1, 5, None, {"lr": 0.05}).filename(),
             CheckpointKey("resnet20", "fashion-mnist", 0, 6, None, {"lr": 0.05}).filename(),
             CheckpointKey("resnet20", "fashion-mnist", 0, 5, 100, {"lr": 0.05}).filename(),
             CheckpointKey("resnet20", "fashion-mnist", 0, 5, None, {"lr": 0.1}).filename(),
             CheckpointKey("resnet20", "cifar10", 0, 5, None, {"lr": 0.05}).filename()}
    assert len(names) == 6
    user = CheckpointKey("pkg.mod:factory", "fashion-mnist", 0, 5).filename()
    assert "/" not in user and ":" not in user


def test_train_config_recipes_and_validation():
    assert train_config_for("vit_tiny", 3, 0).optimizer == "adamw"
    assert train_config_for("resnet20", 3, 0).optimizer == "sgd"
    assert train_config_for(SMALL, 3, 1, lr=0.2).lr == 0.2
    for bad in ({"epochs": -1}, {"batch_size": 0}, {"optimizer": "lion"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_checkpoints_load_as_plain_data_only(fmnist_small, tmp_path):
    ckpt = train_or_load(SMALL, epochs=0, limit=2000, splits=fmnist_small, cache_dir=tmp_path, progress=None)
    blob = torch.load(ckpt.path, weights_only=True)
    # Checkpoints written before torch_version was stored as a str hold a TorchVersion: still readable.
    blob["meta"]["torch_version"] = torch.__version__
    torch.save(blob, ckpt.path)
    assert load_checkpoint(ckpt.path).meta["torch_version"] == str(torch.__version__)
    # Anything else that would need code to unpickle is refused, not executed.
    blob["meta"]["extra"] = TrainConfig()
    torch.save(blob, ckpt.path)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(ckpt.path)


def thin_shortcut_cnn() -> nn.Module:
    """The shape channel pruning left in the quickstart's best ResNet-20: a strided 1x1 conv on 4 channels."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 32, 1, 2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def test_onednn_hazards_are_strided_1x1_convs_on_few_channels():
    assert onednn_1x1_hazards(thin_shortcut_cnn()) == ["3"]
    safe = nn.Sequential(nn.Conv2d(16, 32, 1, 2), nn.Conv2d(4, 8, 3, 2, 1), nn.Conv2d(4, 8, 1, 1),
                         nn.Conv2d(32, 32, 1, 2, groups=4))
    assert onednn_1x1_hazards(safe) == ["3"]  # 8 input channels per group
    assert onednn_1x1_hazards(nn.Sequential(nn.Conv2d(16, 32, 1, 2), nn.Conv2d(4, 8, 3, 2, 1))) == []


def _layouts_seen(model: nn.Module, x: torch.Tensor) -> list[bool]:
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].stride(1) == 1))
    config = TrainConfig(epochs=1, batch_size=32, augment=True)
    with torch.backends.mkldnn.flags(enabled=False):  # were the workaround broken, this process must survive
        train_epochs(model, x, torch.zeros(len(x), dtype=torch.long), config)
    return seen


def test_a_model_with_a_hazard_trains_on_nchw_batches_and_others_keep_the_loaders_layout():
    # single-channel images as the loaders hold them: strides torch reads as channels-last
    x = torch.randn(64, 28, 28, 1).permute(0, 3, 1, 2)
    assert x.stride(1) == 1
    assert _layouts_seen(thin_shortcut_cnn(), x) == [False, False]
    assert _layouts_seen(small_cnn(), x) == [True, True]


def test_training_a_thin_strided_shortcut_does_not_corrupt_the_heap():
    """Regression for the quickstart crash: in-process it segfaulted (1 thread) or hung (2 threads)."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        from tests.test_training import thin_shortcut_cnn
        from automl.training import TrainConfig, train_epochs
        torch.manual_seed(0)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x = torch.randn(512, 28, 28, 1).permute(0, 3, 1, 2)
            y = torch.randint(0, 10, (512,))
            history = train_epochs(thin_shortcut_cnn(), x, y, TrainConfig(epochs=2, batch_size=64))
            assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
        print("trained")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]
