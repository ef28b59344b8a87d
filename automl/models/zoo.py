"""The model zoo: the only place where model names are defined.

Users can also name their own model as ``package.module:factory``; the factory is called with the
keyword arguments it accepts among ``in_channels``, ``num_classes`` and ``image_size``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from automl.models.mobilenetv2 import mobilenetv2
from automl.models.resnet import resnet20, resnet56
from automl.models.vgg import vgg8
from automl.models.vit import vit_tiny


class ModelError(ValueError):
    """An unknown model name or a factory that cannot be imported or called."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    # Training recipe that suits the architecture (keys of automl.training.TrainConfig).
    recipe: tuple[tuple[str, object], ...] = ()


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("resnet20", resnet20, "CIFAR-style ResNet-20 (3x3 basic blocks, 16/32/64 channels)"),
        ZooEntry("resnet56", resnet56, "CIFAR-style ResNet-56 (3x3 basic blocks, 16/32/64 channels)"),
        ZooEntry("vgg8", vgg8, "VGG-style net: 6 conv-BN-ReLU (32/64/128), 3 max-pools, 2 FC layers"),
        ZooEntry("mobilenetv2", mobilenetv2, "MobileNetV2, width 0.5, stride-1 stem (inverted residuals, depthwise)"),
        ZooEntry("vit_tiny", vit_tiny, "Vision transformer: 4x4 patches, dim 64, 4 blocks, 4 heads, MLP 128",
                 recipe=(("optimizer", "adamw"), ("lr", 2e-3), ("weight_decay", 0.05))),
    )
}


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    if name in ZOO:
        return ZOO[name].factory
    if ":" not in name:
        raise ModelError(f"unknown model '{name}'; zoo models: {', '.join(ZOO)}; "
                         "or name your own as 'package.module:factory'")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model '{name}' must look like 'package.module:factory'")
    try:
        module = _import_user_module(module_name)
    except Exception as exc:  # an ImportError, or any error raised while the user's module runs
        raise ModelError(f"cannot import module '{module_name}' for model '{name}': "
                         f"{type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"module '{module_name}' has no callable '{attr}' (from model '{name}')")
    return factory


def _import_user_module(module_name: str):
    """Import a user's module; fall back to the working directory, which the `automl` console script
    (unlike `python -m automl`) leaves off sys.path, so `--model mymodels:net` works from a project folder."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise


def recipe_for(name: str) -> dict[str, object]:
    """Training-recipe overrides for a zoo model (empty for user factories)."""
    return dict(ZOO[name].recipe) if name in ZOO else {}


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Build a zoo model or a user factory for a dataset's channels, classes and image size."""
    factory = resolve_factory(name)
    offered = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    try:
        params = inspect.signature(factory).parameters
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = offered if accepts_kwargs else {k: v for k, v in offered.items() if k in params}
    except (TypeError, ValueError):
        kwargs = {}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelError(f"factory for model '{name}' failed with {kwargs}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory for '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
