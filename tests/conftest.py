"""Shared test set-up: quiet, isolated Ray / MLflow / cache settings and small seeded data.

Helpers may add fixtures here; keep them cheap and session-scoped where data is involved.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (checkpoints, profiles) go to a temp dir, never the user's ~/.cache."""
    os.environ["AUTOML_HOME"] = str(tmp_path_factory.mktemp("automl_home"))


@pytest.fixture(scope="session")
def fmnist_small():
    """2,000 Fashion-MNIST training images (10% carved for validation) and 500 test images, seeded."""
    from automl.data import load_dataset

    return load_dataset("fashion-mnist", limit=2000, test_limit=500, seed=0)


@pytest.fixture(scope="session")
def trained_resnet20(fmnist_small, tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """A ResNet-20 trained 4 epochs on `fmnist_small` (seeded), shared by the modules that need a model that
    has learned something (export, quantization, baselines): training it once saves ~60 s of the suite.
    Under pytest-xdist the first worker that needs it trains it and saves its weights in the run's shared temp
    dir (behind a file lock); the other workers load them (each would otherwise spend ~50 s on 2 cores).
    Tests must not modify it in place (deep-copy it first; `apply_policy` and `attach_fake_quant` on a copy)."""
    from filelock import FileLock

    from automl.models import build_model
    from automl.training import TrainConfig, train_epochs

    torch.manual_seed(0)
    model = build_model("resnet20", 1, 10, 28)

    def train() -> None:
        train_epochs(model, fmnist_small.x_train, fmnist_small.y_train,
                     TrainConfig(epochs=4, batch_size=64, seed=0))

    if worker_id == "master":  # not under xdist
        train()
        return model.eval()
    weights = tmp_path_factory.getbasetemp().parent / "trained_resnet20.pt"  # this run's, shared by workers
    with FileLock(str(weights) + ".lock"):
        if weights.exists():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            train()
            torch.save(model.state_dict(), weights)
    return model.eval()
