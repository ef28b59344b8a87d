"""Proxy evaluation inside the search loop, and the short fine-tune of the winners.

AMC's observation: ranking candidates needs neither fine-tuning nor the full validation set. The
proxy applies a policy, re-estimates BatchNorm statistics on a few training batches (pruning shifts
every activation distribution; stale running stats alone can cost tens of points), then measures
accuracy on a validation subset. That is ~1 s per candidate on ResNet-20, so an agent can afford
hundreds. When the budget prunes so deep that every candidate scores near chance, a few SGD steps
(`finetune_steps`, the same images for every candidate) restore the ranking. The best candidates
are then fine-tuned with their masks kept (`finetune_and_test`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from automl.data import DatasetSplits
from automl.policy import CompressionPolicy
from automl.training import TrainConfig, evaluate, train_epochs


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on `images`.

    Returns the number of BatchNorm layers recalibrated. Weights are untouched, so masks stay valid.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) == 0:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return len(bns)


class ProxyEvaluator:
    """policy -> {"accuracy", "seconds", ...}: apply, recalibrate BN, (optionally train briefly), score a
    validation subset.

    Holds the base model and the fixed data subsets, so every candidate is scored on exactly the same
    images (the comparison between agents is fair and reproducible).

    Why `finetune_steps`: when a budget removes most of a model's MACs (ResNet-20 needs ~75% of them gone
    for 2x on onnxruntime), every candidate scores near chance after BN recalibration alone, and a search
    ranks noise (docs/benchmarks.md, headline analysis). A few dozen SGD steps on fixed training images,
    the same for every candidate, restore a ranking at a cost of seconds per candidate.
    """

    def __init__(self, base_model: nn.Module, splits: DatasetSplits, *, val_images: int = 1000,
                 calib_batches: int = 4, batch_size: int = 128, recalibrate: bool = True,
                 finetune_steps: int = 0, finetune_lr: float = 0.01, seed: int = 0):
        if val_images < 1:
            raise ValueError(f"val_images must be >= 1, got {val_images}")
        if finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {finetune_steps}")
        if finetune_steps and len(splits.x_train) < batch_size:
            raise ValueError(f"finetune_steps={finetune_steps} needs at least one training batch ({batch_size} "
                             f"images); the splits hold {len(splits.x_train)}")
        if len(splits.x_val) == 0:
            raise ValueError("the splits have no validation images; load the dataset with a validation share")
        self.base_model = copy.deepcopy(base_model).eval()
        self.x_val = splits.x_val[:val_images]
        self.y_val = splits.y_val[:val_images]
        self.calib = splits.x_train[:calib_batches * batch_size]
        self.batch_size = batch_size
        self.recalibrate = recalibrate
        self.finetune_steps, self.finetune_lr, self.seed = finetune_steps, finetune_lr, seed
        self.x_ft = splits.x_train[:finetune_steps * batch_size]
        self.y_ft = splits.y_train[:finetune_steps * batch_size]
        self.example = self.x_val[:1]

    def compress(self, policy: CompressionPolicy) -> Any:
        """The compressed model (a `search_spaces.CompressedModel`) with recalibrated BN statistics."""
        from search_spaces import apply_policy

        compressed = apply_policy(self.base_model, policy, self.example, calib=self.calib)
        if self.recalibrate:
            recalibrate_bn(compressed.model, self.calib, self.batch_size)
        compressed.model.eval()
        return compressed

    def prepare(self, policy: CompressionPolicy) -> Any:
        """The compressed model as the proxy scores it: BN recalibrated, then `finetune_steps` SGD steps
        (one pass over that many fixed batches, cosine lr, masks re-applied after each step)."""
        compressed = self.compress(policy)
        if self.finetune_steps:
            config = replace(TrainConfig(), epochs=1, lr=self.finetune_lr, batch_size=self.batch_size,
                             seed=self.seed)
            train_epochs(compressed.model, self.x_ft, self.y_ft, config, after_step=compressed.reapply_masks,
                         label="proxy finetune")
            compressed.model.eval()
        return compressed

    def __call__(self, policy: CompressionPolicy) -> dict[str, float]:
        t0 = time.perf_counter()
        compressed = self.prepare(policy)
        acc = evaluate(compressed.model, self.x_val, self.y_val)
        return {"accuracy": float(acc), "proxy_seconds": time.perf_counter() - t0,
                "params": float(sum(p.numel() for p in compressed.model.parameters())),
                "macs": float(compressed.report.get("macs_after", math.nan))}


def finetune(compressed: Any, splits: DatasetSplits, epochs: float = 1.0, *, lr: float = 0.01,
             batch_size: int = 128, seed: int = 0, progress: Any = None) -> list[dict[str, float]]:
    """Fine-tune a CompressedModel in place; its masks are re-applied after every step so pruned weights
    stay zero. Fractional epochs train on that share of the training set (one pass)."""
    x, y = splits.x_train, splits.y_train
    passes = max(1, math.ceil(epochs))
    if epochs < 1:
        n = max(batch_size, int(len(x) * epochs))
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=gen)[:n]
        x, y = x[idx], y[idx]
    config = replace(TrainConfig(), epochs=passes, lr=lr, batch_size=batch_size, seed=seed)
    history = train_epochs(compressed.model, x, y, config, progress=progress, after_step=compressed.reapply_masks,
                           label="finetune")
    compressed.model.eval()
    return history


def finetune_and_test(base_model: nn.Module, policy: CompressionPolicy, splits: DatasetSplits, epochs: float = 1.0,
                      *, calib_batches: int = 4, lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                      progress: Any = None) -> dict[str, float]:
    """Apply `policy` to a copy of `base_model`, recalibrate BN, fine-tune, and report val / test accuracy."""
    evaluator = ProxyEvaluator(base_model, splits, val_images=max(1, len(splits.x_val)),
                               calib_batches=calib_batches, batch_size=batch_size)
    compressed = evaluator.compress(policy)
    before = evaluate(compressed.model, splits.x_test, splits.y_test)
    t0 = time.perf_counter()
    finetune(compressed, splits, epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    zeros_kept = all(bool((compressed.model.get_submodule(name).weight[mask == 0] == 0).all())
                     for name, mask in compressed.masks.items())
    return {"test_accuracy_before": float(before),
            "val_accuracy": float(evaluate(compressed.model, splits.x_val, splits.y_val)),
            "test_accuracy": float(evaluate(compressed.model, splits.x_test, splits.y_test)),
            "finetune_seconds": time.perf_counter() - t0, "masks_kept": float(zeros_kept)}
