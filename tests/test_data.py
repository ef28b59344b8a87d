"""Data loaders on tiny files written to temp dirs: IDX (gzip and raw), CIFAR pickles, corrupt and missing
files, and deterministic, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl.data import DATASETS, DatasetError, dataset_info, load_dataset
from automl.data.cifar import read_batch, write_batch
from automl.data.datasets import FASHION_MNIST_FILES
from automl.data.idx import read_idx, write_idx


def fake_fmnist(folder, n_train: int = 200, n_test: int = 50, gz: bool = True, seed: int = 0):
    """Write a Fashion-MNIST-shaped dataset; pixel (0, 0) of each train image holds its index mod 256."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x_tr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_tr[:, 0, 0] = np.arange(n_train) % 256
    arrays = {"train_images": x_tr, "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    for key, fname in FASHION_MNIST_FILES.items():
        write_idx(folder / (fname if gz else fname.removesuffix(".gz")), arrays[key])
    return arrays


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = np.arange(2 * 3 * 4).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a.idx{suffix}", arr)
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)


def test_idx_truncated_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "t.gz", np.zeros((10, 28, 28), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="corrupt") as exc:
        read_idx(path, "HINT")
    assert str(path) in str(exc.value) and "HINT" in str(exc.value)


@pytest.mark.parametrize("flip, error", [(range(12, 14), "invalid"), (range(20, 60), "CRC check")])
def test_idx_damaged_deflate_stream_is_a_dataset_error(tmp_path, flip, error):
    # Damage at the start of the deflate stream raises zlib.error (not an OSError, so easy to miss);
    # damage further in surfaces as gzip's CRC check.
    path = write_idx(tmp_path / "d.gz", np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    for i in flip:
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="corrupt") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert error in str(exc.value)


def test_idx_not_gzip_bad_header_and_short_payload(tmp_path):
    not_gz = tmp_path / "x.gz"
    not_gz.write_bytes(b"this is not gzip data")
    with pytest.raises(DatasetError, match="corrupt"):
        read_idx(not_gz)
    bad_header = tmp_path / "h"
    bad_header.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="no valid IDX header"):
        read_idx(bad_header)
    short = tmp_path / "s"
    short.write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\x00" * 99)
    with pytest.raises(DatasetError, match="expected 100 data bytes"):
        read_idx(short)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx(tiny)


def test_fashion_mnist_from_a_folder(tmp_path):
    arrays = fake_fmnist(tmp_path / "fm")
    splits = load_dataset("fashion-mnist", tmp_path / "fm", seed=0)
    assert splits.sizes() == {"train": 180, "val": 20, "test": 50}
    assert splits.input_shape == (1, 28, 28)
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    # Normalised with the dataset's mean/std: a 0 pixel maps to -mean/std.
    info = dataset_info("fashion-mnist")
    expected0 = torch.tensor((0 / 255 - info.mean[0]) / info.std[0])
    test0 = torch.from_numpy(arrays["test_images"][0].astype(np.float32)) / 255
    assert torch.allclose(splits.x_test[0, 0], (test0 - info.mean[0]) / info.std[0], atol=1e-6)
    assert torch.all(splits.x_test.min() >= expected0 - 1e-6)


def test_fashion_mnist_raw_files_are_accepted(tmp_path):
    fake_fmnist(tmp_path / "raw", gz=False)
    assert load_dataset("fashion-mnist", tmp_path / "raw").sizes()["test"] == 50


def test_missing_fashion_mnist_file_names_file_and_apt_package(tmp_path):
    fake_fmnist(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("fashion-mnist", tmp_path / "fm")
    message = str(exc.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "dataset-fashion-mnist" in message
    assert "\n" not in message


def test_missing_data_dir_and_corrupt_file_mention_apt_package(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert "nowhere" in str(exc.value)
    fake_fmnist(tmp_path / "fm")
    path = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist", tmp_path / "fm")
    assert "train-images-idx3-ubyte.gz" in str(exc.value)


def test_mismatched_images_and_labels(tmp_path):
    fake_fmnist(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DatasetError, match="do not match"):
        load_dataset("fashion-mnist", tmp_path / "fm")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(exc.value)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    fake_fmnist(tmp_path / "env")
    monkeypatch.setenv("AUTOML_DATA_DIR", str(tmp_path / "env"))
    assert load_dataset("fashion-mnist").sizes()["test"] == 50


def _ids(x: torch.Tensor, info) -> list[int]:
    """Recover pixel (0, 0), which fake_fmnist set to the image index."""
    raw = x[:, 0, 0, 0] * info.std[0] + info.mean[0]
    return [int(v) for v in torch.round(raw * 255)]


def test_splits_are_deterministic_disjoint_and_seeded(tmp_path):
    fake_fmnist(tmp_path / "fm", n_train=250)
    info = dataset_info("fashion-mnist")
    a = load_dataset("fashion-mnist", tmp_path / "fm", seed=3)
    b = load_dataset("fashion-mnist", tmp_path / "fm", seed=3)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    train, val = _ids(a.x_train, info), _ids(a.x_val, info)
    assert len(set(train)) == len(train) == 225 and len(val) == 25
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(range(250))
    c = load_dataset("fashion-mnist", tmp_path / "fm", seed=4)
    assert set(_ids(c.x_val, info)) != set(val)
    # Labels travel with their images (fake label = index mod 10).
    assert [i % 10 for i in train] == a.y_train.tolist()


def test_limit_and_test_limit(tmp_path):
    fake_fmnist(tmp_path / "fm", n_train=200)
    info = dataset_info("fashion-mnist")
    small = load_dataset("fashion-mnist", tmp_path / "fm", seed=0, limit=100, test_limit=10, val_fraction=0.2)
    assert small.sizes() == {"train": 80, "val": 20, "test": 10}
    full = load_dataset("fashion-mnist", tmp_path / "fm", seed=0, val_fraction=0.2)
    # A limited run takes a prefix of the same seeded permutation.
    assert set(_ids(small.x_val, info)) <= set(_ids(full.x_val, info)) | set(_ids(full.x_train, info))
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("fashion-mnist", tmp_path / "fm", val_fraction=1.0)


# ------------------------------------------------------------------------------ CIFAR
def fake_cifar(folder, batches: int = 2, per_batch: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, batches + 1):
        write_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 10, per_batch))
    write_batch(folder / "test_batch", rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, 12))


def test_cifar_batch_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    path = write_batch(tmp_path / "data_batch_1", images, np.array([1, 2, 3, 4, 5]))
    x, y = read_batch(path)
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [1, 2, 3, 4, 5] and y.dtype == np.int64


def test_cifar_dataset_from_partial_batches(tmp_path):
    fake_cifar(tmp_path / "c")
    splits = load_dataset("cifar10", tmp_path / "c", seed=0)
    assert splits.input_shape == (3, 32, 32)
    assert splits.sizes() == {"train": 54, "val": 6, "test": 12}


def test_cifar_errors(tmp_path):
    with pytest.raises(DatasetError, match="pass --data-dir"):
        load_dataset("cifar10")  # no default location
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="data_batch_1..5"):
        load_dataset("cifar10", tmp_path / "empty")
    fake_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing file .*test_batch"):
        load_dataset("cifar10", tmp_path / "c")
    corrupt = tmp_path / "c" / "data_batch_1"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt") as exc:
        read_batch(corrupt)
    assert "data_batch_1" in str(exc.value) and "cifar-10-python" in str(exc.value)
    wrong_shape = tmp_path / "w"
    write_batch(wrong_shape, np.zeros((2, 3, 16, 16), np.uint8), np.array([0, 1]))
    with pytest.raises(DatasetError, match="expected data of shape"):
        read_batch(wrong_shape)
