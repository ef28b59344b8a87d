"""Base training, evaluation and the checkpoint cache.

Data lives in memory as tensors (see automl.data), so training is a plain loop over index batches:
no DataLoader workers competing for the machine's two cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automl.data import DatasetSplits, dataset_info, load_dataset
from automl.models import build_model, recipe_for

ProgressFn = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """How to train; part of the checkpoint key so a changed recipe never reuses a stale checkpoint."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")


def set_threads(threads: int | None = None) -> None:
    """Pin torch's intra-op threads (default: every core); timings and shared machines need it explicit."""
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, per batch, on tensors."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return padded[:, :, dy:dy + h, dx:dx + w]


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = config.lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)


# oneDNN's AVX2 / AVX-512 1x1 convolution writes past its workspace in backward_weights when the kernel is
# 1x1, the stride is above 1 and the input is channels-last (NHWC) with fewer input channels than its channel
# block (8 on AVX2, 16 on AVX-512): heap corruption, a segfault with one thread, a busy hang with two
# (upstream uxlfoundation/oneDNN#6035, open; torch 2.13 ships the bug). Channel pruning makes such layers
# (a ResNet shortcut left with 4 input channels), and single-channel images (Fashion-MNIST) arrive with
# strides torch reads as channels-last, so the whole network runs NHWC. The workaround: a model with such a
# layer trains on NCHW batches, which keeps oneDNN off the faulty path; other models keep their layout (NHWC
# trains ~15% faster here).
_ONEDNN_1X1_IC_BLOCK = 16


def onednn_1x1_hazards(model: nn.Module) -> list[str]:
    """Names of the Conv2d layers that would hit oneDNN's strided-1x1 backward bug when trained NHWC."""
    hazards = []
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
                and max(module.stride) > 1 and module.in_channels // module.groups < _ONEDNN_1X1_IC_BLOCK):
            hazards.append(name)
    return hazards


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    # clone, not contiguous(): a 1-channel NHWC tensor already counts as contiguous, so contiguous() would
    # keep the strides that make torch pick the channels-last path
    return x.clone(memory_format=torch.contiguous_format)


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *,
                 progress: ProgressFn | None = None, after_step: Callable[[], None] | None = None,
                 label: str = "train") -> list[dict[str, float]]:
    """Train in place with a cosine schedule; `after_step` runs after every optimizer step (masks use it)."""
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = max(1, math.ceil(len(x) / config.batch_size))
    total_steps = max(1, steps_per_epoch * config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    nchw = bool(onednn_1x1_hazards(model))
    if nchw:
        model.to(memory_format=torch.contiguous_format)
    history = []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            xb, yb = x[idx], y[idx]
            if config.augment:
                xb = _augment(xb, gen)
            if nchw:
                xb = _as_nchw(xb)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{label}: loss became {loss.item()} at epoch {epoch + 1} step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            if progress and (step + 1) % max(1, steps_per_epoch // 5) == 0 and step + 1 < steps_per_epoch:
                progress(f"{label} epoch {epoch + 1}/{config.epochs}: {100 * (step + 1) // steps_per_epoch}% "
                         f"loss {loss_sum / seen:.4f}")
        record = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if progress:
            progress(f"{label} epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f} "
                     f"train acc {record['train_acc']:.4f} ({record['seconds']:.1f}s)")
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    if len(x) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


# ------------------------------------------------------------------------------ checkpoints
def default_home() -> Path:
    """Where caches live: $AUTOML_HOME, else ~/.cache/compress-search."""
    return Path(os.environ.get("AUTOML_HOME") or Path.home() / ".cache" / "compress-search")


@dataclass(frozen=True)
class CheckpointKey:
    model: str
    dataset: str
    seed: int
    epochs: int
    limit: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def filename(self) -> str:
        safe_model = self.model.replace(":", "_").replace("/", "_")
        digest = hashlib.sha1(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:8]
        limit = f"-n{self.limit}" if self.limit else ""
        return f"{safe_model}-{self.dataset}-s{self.seed}-e{self.epochs}{limit}-{digest}.pt"


@dataclass
class Checkpoint:
    """A trained model plus what it was trained on and how well it does."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None = None
    reused: bool = False


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"meta": meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written checkpoint
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model recorded in a checkpoint and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with 'automl train'")
    # weights_only: a checkpoint is plain data, so loading one never runs code. TorchVersion is allowed
    # because checkpoints written before the version was stored as a str hold one.
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = build_model(meta["model"], meta["in_channels"], meta["num_classes"], meta["image_size"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return Checkpoint(model=model, meta=meta, path=path)


def train_config_for(model: str, epochs: int, seed: int, **overrides: Any) -> TrainConfig:
    return replace(TrainConfig(epochs=epochs, seed=seed), **{**recipe_for(model), **overrides})


def train_or_load(model_name: str, dataset: str = "fashion-mnist", *, epochs: int = 5, seed: int = 0,
                  limit: int | None = None, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                  splits: DatasetSplits | None = None, progress: ProgressFn | None = stderr_progress,
                  force: bool = False, threads: int | None = None) -> Checkpoint:
    """Train a base model, or reuse the cached checkpoint for the same model/dataset/seed/epochs/limit.

    `splits`, when given, replaces loading `dataset` (the cache key still uses `dataset` and `limit`, so
    pass splits that match them). `threads` sets torch's thread count; by default the caller's setting
    stands (tests pin one thread, and training must not silently undo that).
    """
    config = train_config_for(model_name, epochs, seed)
    key = CheckpointKey(model_name, dataset, seed, epochs, limit, recipe=asdict(config))
    path = Path(cache_dir or default_home() / "checkpoints") / key.filename()
    if path.is_file() and not force:
        try:
            ckpt = load_checkpoint(path)
        except Exception as exc:  # unreadable or from an incompatible model definition: retrain over it
            if progress:
                progress(f"{model_name}: cached checkpoint {path} is unusable ({type(exc).__name__}: {exc}); "
                         "retraining")
        else:
            ckpt.reused = True
            return ckpt
    if threads is not None:
        set_threads(threads)
    torch.manual_seed(seed)
    # Build the model before loading data: a bad model name fails in a second, not after reading 60k images.
    info = splits.info if splits is not None else dataset_info(dataset)
    model = build_model(model_name, info.in_channels, info.num_classes, info.image_size)
    if splits is None:
        if progress:
            progress(f"loading {dataset}" + (f" (limit {limit})" if limit else ""))
        splits = load_dataset(dataset, data_dir, seed=seed, limit=limit)
    if progress:
        sizes = splits.sizes()
        progress(f"training {model_name} on {dataset}: {sizes['train']} train / {sizes['val']} val / "
                 f"{sizes['test']} test images, {epochs} epochs, {config.optimizer} lr {config.lr}")
    t0 = time.perf_counter()
    history = train_epochs(model, splits.x_train, splits.y_train, config, progress=progress, label=model_name)
    train_time = time.perf_counter() - t0
    meta = {
        "model": model_name, "dataset": dataset, "seed": seed, "epochs": epochs, "limit": limit,
        "in_channels": info.in_channels, "num_classes": info.num_classes, "image_size": info.image_size,
        "train_config": asdict(config), "history": history, "train_seconds": train_time,
        "val_acc": evaluate(model, splits.x_val, splits.y_val),
        "test_acc": evaluate(model, splits.x_test, splits.y_test),
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(path, model, meta)
    return Checkpoint(model=model, meta=meta, path=path, reused=False)
