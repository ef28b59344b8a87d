"""Uniform channel pruning at the quickstart's speed, with the quickstart's fine-tune: the baseline the
`make run` pick (rule_based, docs/benchmarks.md "Quickstart") has to beat.

    .venv/bin/python experiments/benchmarks/quickstart_vs_uniform.py [--targets 0.30 0.35 0.40] [--speedup 2.42]

Base model: the quickstart's checkpoint (`train_or_load` resnet20 on Fashion-MNIST, 3 epochs, seed 0).
Each MAC target gets `search_spaces.baselines.uniform` channel pruning aligned to 8, timed beside the dense
model on onnxruntime fp32 (batch 1, 1 thread) in `--processes` timing processes (median speedup); the
target whose speedup is nearest `--speedup` gets the quickstart's fine-tune (BN recalibrated, 1 epoch at
lr 0.01, seed 0) and its test accuracy is printed. One seed: a hand check, not a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # finetune_length.py, for its timing helpers

from finetune_length import dense_artifact, speedups_beside  # noqa: E402

from automl.data import load_dataset  # noqa: E402
from automl.evaluation import ProxyEvaluator, finetune  # noqa: E402
from automl.search.runner import deployable  # noqa: E402
from automl.training import evaluate, train_or_load  # noqa: E402
from search_spaces.baselines import uniform  # noqa: E402

SHAPE = (1, 28, 28)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.30, 0.35, 0.40], help="MAC ratios to try")
    ap.add_argument("--speedup", type=float, default=2.42, help="fine-tune the target nearest this speedup")
    ap.add_argument("--processes", type=int, default=3, help="timing processes (median speedup)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    base = train_or_load("resnet20", "fashion-mnist", epochs=3, seed=0).model
    splits = load_dataset("fashion-mnist", seed=0)
    evaluator = ProxyEvaluator(base, splits, val_images=len(splits.x_val), calib_batches=4)
    dense = dense_artifact(base, SHAPE)  # exported once, timed beside every target
    speedups = {}
    for target in args.targets:
        policy = uniform(base, "channel", target, SHAPE, model_name="resnet20", align=8)
        runs = speedups_beside(dense, deployable(evaluator.compress(policy).model), SHAPE, args.processes)
        speedups[target] = (policy, statistics.median(runs))
        print(f"uniform channel at MAC target {target:.2f}: {statistics.median(runs):.2f}x "
              f"({', '.join(f'{r:.2f}' for r in runs)})", flush=True)
    target = min(speedups, key=lambda t: abs(speedups[t][1] - args.speedup))
    policy, speedup = speedups[target]
    compressed = evaluator.compress(policy)
    finetune(compressed, splits, 1.0, lr=0.01, seed=0)
    acc = evaluate(compressed.model, splits.x_test, splits.y_test)
    print(f"uniform channel at MAC target {target:.2f} ({speedup:.2f}x): test accuracy {100 * acc:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
