"""Dataset registry and deterministic train / validation / test splits.

Datasets are small enough to live in memory as tensors, which keeps Ray workers and the proxy
evaluator simple (no DataLoader worker processes on a 2-core machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from automl.data.cifar import HINT as CIFAR_HINT
from automl.data.cifar import load_cifar10
from automl.data.errors import DatasetError
from automl.data.idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_HINT = ("Install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; add --reinstall "
                      "if the files are damaged), or pass "
                      "--data-dir pointing at a folder with the four IDX files "
                      f"({', '.join(FASHION_MNIST_FILES.values())}).")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: what a model needs to be built for it."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_dir: Path | None
    loader: Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class DatasetSplits:
    """Normalised float tensors (N, C, H, W) and int64 labels for train / val / test."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


def _load_fashion_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = {}
    for key, fname in FASHION_MNIST_FILES.items():
        path = data_dir / fname
        if not path.is_file() and (data_dir / fname.removesuffix(".gz")).is_file():
            path = data_dir / fname.removesuffix(".gz")
        parts[key] = read_idx(path, FASHION_MNIST_HINT)
    for split in ("train", "test"):
        x, y = parts[f"{split}_images"], parts[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"Fashion-MNIST {split} images {x.shape} and labels {y.shape} do not match "
                               f"in {data_dir}. {FASHION_MNIST_HINT}")
    return (parts["train_images"][:, None], parts["train_labels"].astype(np.int64),
            parts["test_images"][:, None], parts["test_labels"].astype(np.int64))


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), FASHION_MNIST_DIR,
                                 _load_fashion_mnist),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None,
                           load_cifar10),
}


_HINTS = {"fashion-mnist": FASHION_MNIST_HINT, "cifar10": CIFAR_HINT}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}'; available: {', '.join(DATASETS)}") from None


def resolve_data_dir(info: DatasetInfo, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("AUTOML_DATA_DIR") or info.default_dir
    hint = _HINTS.get(info.name, "")
    if data_dir is None:
        raise DatasetError(f"dataset '{info.name}' has no default location; pass --data-dir. {hint}".strip())
    path = Path(data_dir)
    if not path.is_dir():
        raise DatasetError(f"data directory {path} does not exist. {hint}".strip())
    return path


def _normalise(x: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (t - mean) / std


def load_dataset(name: str = "fashion-mnist", data_dir: str | Path | None = None, *, val_fraction: float = 0.1,
                 seed: int = 0, limit: int | None = None, test_limit: int | None = None) -> DatasetSplits:
    """Load a dataset and carve a seeded validation split out of its training set.

    `limit` caps the number of training+validation images (taken from a seeded permutation, so a
    limited run is still class-balanced in expectation); `test_limit` caps the test set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    info = dataset_info(name)
    x_tr, y_tr, x_te, y_te = info.loader(resolve_data_dir(info, data_dir))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_tr))
    if limit is not None:
        order = order[: max(2, int(limit))]
    n_val = max(1, int(round(len(order) * val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if test_limit is not None:
        x_te, y_te = x_te[:test_limit], y_te[:test_limit]
    return DatasetSplits(
        info=info,
        x_train=_normalise(x_tr[train_idx], info), y_train=torch.from_numpy(y_tr[train_idx]),
        x_val=_normalise(x_tr[val_idx], info), y_val=torch.from_numpy(y_tr[val_idx]),
        x_test=_normalise(x_te, info), y_test=torch.from_numpy(y_te),
    )
