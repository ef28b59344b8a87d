"""`automl models` and `automl train` as real subprocesses: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from automl.data.datasets import FASHION_MNIST_DIR, FASHION_MNIST_FILES
from automl.data.idx import write_idx
from automl.models import ZOO

TESTS_DIR = Path(__file__).parent


def automl(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # One thread per subprocess: the test machine is small and shared.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "automl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """The error is a single line, the last on stderr (progress lines may precede it), with no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"automl {command}: error: ")]
    assert errors == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[-1]


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    """A 300-image Fashion-MNIST-format folder: real IDX files, small enough to train ResNet-20 on in seconds."""
    folder = tmp_path_factory.mktemp("tiny_fmnist")
    rng = np.random.default_rng(0)
    sizes = {"train": 300, "test": 60}
    for key, fname in FASHION_MNIST_FILES.items():
        split, what = key.split("_")
        n = sizes[split]
        array = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if what == "images"
                 else rng.integers(0, 10, n).astype(np.uint8))
        write_idx(folder / fname, array)
    return folder


def test_models_lists_the_zoo():
    result = automl("models")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["model", "params", "MMACs", "prunable_layers"]
    for name in ZOO:
        assert any(line.startswith(name + " ") for line in result.stdout.splitlines()), name
    as_json = json.loads(automl("models", "--format", "json", "--dataset", "cifar10").stdout)
    resnet20 = next(r for r in as_json if r["model"] == "resnet20")
    assert resnet20["MMACs"] == pytest.approx(41.0, abs=0.5) and resnet20["prunable_layers"] == 22


def test_models_layers_and_errors():
    result = automl("models", "--layers", "resnet20")
    assert result.returncode == 0, result.stderr
    assert "layer2.0.shortcut.0" in result.stdout and "conv1x1" in result.stdout
    assert "bogus_net" in one_line_error(automl("models", "--layers", "bogus_net"), "models")


def test_train_a_zoo_model_then_reuse_it(tmp_path, tiny_fmnist):
    args = ("train", "--model", "resnet20", "--data-dir", str(tiny_fmnist), "--epochs", "1", "--limit", "200",
            "--cache-dir", str(tmp_path), "--threads", "1")
    first = automl(*args, "--format", "json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["model"] == "resnet20" and summary["epochs"] == 1 and summary["reused"] is False
    assert 0.0 <= summary["test_acc"] <= 1.0
    assert Path(summary["checkpoint"]).parent == tmp_path and Path(summary["checkpoint"]).is_file()
    assert "resnet20 epoch 1/1" in first.stderr and "180 train / 20 val / 60 test" in first.stderr
    second = automl(*args)
    assert second.returncode == 0, second.stderr
    assert "resnet20 on fashion-mnist: test accuracy" in second.stdout
    assert "reused cached checkpoint" in second.stdout and summary["checkpoint"] in second.stdout
    assert "epoch" not in second.stderr


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package")
def test_train_a_user_model_on_real_fashion_mnist(tmp_path):
    # The factory lives in tests/test_training.py, imported as package.module:factory.
    result = automl("train", "--model", "test_training:small_cnn", "--epochs", "1", "--limit", "3000",
                    "--cache-dir", str(tmp_path), "--threads", "1", "--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["test_acc"] > 0.3  # 10 classes: chance is 0.1
    assert "test_training:small_cnn epoch 1/1" in result.stderr


def test_train_errors_are_one_line(tmp_path, tiny_fmnist):
    missing = one_line_error(automl("train", "--data-dir", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path)),
                             "train")
    assert "nowhere" in missing and "dataset-fashion-mnist" in missing
    broken = tmp_path / "broken"
    broken.mkdir()
    for fname in FASHION_MNIST_FILES.values():
        (broken / fname).write_bytes((tiny_fmnist / fname).read_bytes())
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    corrupt = one_line_error(automl("train", "--data-dir", str(broken), "--cache-dir", str(tmp_path)), "train")
    assert "t10k-images-idx3-ubyte.gz" in corrupt and "corrupt" in corrupt and "dataset-fashion-mnist" in corrupt
    bad_model = one_line_error(automl("train", "--model", "resnet21", "--data-dir", str(tiny_fmnist),
                                      "--cache-dir", str(tmp_path)), "train")
    assert "unknown model 'resnet21'" in bad_model and "resnet20" in bad_model
    bad_dataset = one_line_error(automl("train", "--dataset", "mnist3d"), "train")
    assert "unknown dataset 'mnist3d'" in bad_dataset and "fashion-mnist" in bad_dataset
    assert not list(tmp_path.glob("*.pt"))


def test_unknown_command_and_help():
    result = automl("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    help_text = automl("--help")
    assert help_text.returncode == 0 and "models" in help_text.stdout and "train" in help_text.stdout


def test_search_summary_spells_out_a_zero_sparsity():
    """A policy's JSON omits a zero sparsity: the printed decision must not read as a pruned layer."""
    from automl.cli.search_cmd import format_summary

    summary = {"search_id": "s", "candidates": 1, "failed": 0, "dense": {}, "mlflow_ui": "mlflow ui",
               "best": {"candidate": 0, "run_id": "r", "stage": "proxy", "accuracy": 0.9, "latency_ms": None,
                        "mac_ratio": 0.5, "policy": {"layers": {
                            "fc": {"scheme": "unstructured"},
                            "conv1": {"scheme": "channel", "align": 8},
                            "conv2": {"scheme": "channel", "sparsity": 0.5, "align": 8},
                            "conv3": {"scheme": "nm", "n": 2, "m": 4},
                            "conv4": {"scheme": "dense"}}}}}
    lines = {line.split()[0]: line for line in format_summary(summary).splitlines() if line.startswith("  ")}
    assert lines["fc"].rstrip().endswith("unstructured   sparsity=0 (unpruned)")
    assert lines["conv1"].rstrip().endswith("sparsity=0 (unpruned), align=8")
    assert lines["conv2"].rstrip().endswith("sparsity=0.5, align=8")
    assert "unpruned" not in lines["conv3"] and "unpruned" not in lines["conv4"]


def test_search_summary_prefers_the_side_by_side_speedup():
    from automl.cli.search_cmd import format_summary

    best = {"candidate": 3, "run_id": "r", "stage": "finetuned", "accuracy": 0.88, "latency_ms": 0.67,
            "latency_source": "measured", "mac_ratio": 0.37, "policy": {"layers": {}}}
    base = {"search_id": "s", "candidates": 4, "failed": 0, "mlflow_ui": "mlflow ui",
            "dense": {"dense_accuracy": 0.9, "dense_latency_ms": 1.405}}
    side = format_summary({**base, "best": {**best, "speedup_measured": 2.42}})
    assert "speedup over dense: 2.42x (measured: the dense model and the policy timed side by side" in side
    plain = format_summary({**base, "best": {**best, "speedup_measured": None}})
    assert "speedup over dense: 2.10x" in plain and "side by side" not in plain
