"""Reader for CIFAR-10's python-pickle batches (data_batch_1..5, test_batch)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from automl.data.errors import DatasetError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
HINT = ("Download 'CIFAR-10 python version' (cifar-10-python.tar.gz), extract it, and pass the "
        "'cifar-10-batches-py' folder as --data-dir.")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 N x 3 x 32 x 32, labels int64 N) from one pickle batch."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file {path}. {HINT}")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(batch[b"data"] if b"data" in batch else batch["data"], dtype=np.uint8)
        labels = batch.get(b"labels", batch.get("labels"))
        labels = np.asarray(labels, dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DatasetError(f"cannot read CIFAR batch {path} ({type(exc).__name__}: {exc}); "
                           f"the file is corrupt. {HINT}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} "
                           f"and {len(labels)}; the file is corrupt. {HINT}")
    return data.reshape(-1, 3, 32, 32), labels


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write a batch in the same format (for tests and small subsets)."""
    payload = {b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
               b"labels": [int(v) for v in labels], b"batch_label": b"subset"}
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    return Path(path)


def load_cifar10(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data_dir = Path(data_dir)
    present = [b for b in TRAIN_BATCHES if (data_dir / b).is_file()]
    if not present:
        raise DatasetError(f"no CIFAR-10 training batches (data_batch_1..5) in {data_dir}. {HINT}")
    xs, ys = zip(*(read_batch(data_dir / b) for b in present), strict=True)
    x_test, y_test = read_batch(data_dir / TEST_BATCH)
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test
