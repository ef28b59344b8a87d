"""`automl train`: train a base model (or reuse the cached checkpoint) and print its test accuracy."""

from __future__ import annotations

import argparse

from automl.cli.base import Command, CommandError, add_data_arguments, print_json
from automl.data import DatasetError
from automl.models import ModelError


class TrainCommand(Command):
    description = ("Train a base model and cache its checkpoint, keyed by model, dataset, seed, epochs and limit; "
                   "a second call with the same key reuses it.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="resnet20", help="zoo name or package.module:factory")
        add_data_arguments(parser)
        parser.add_argument("--epochs", type=int, default=5)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--limit", type=int, default=None, help="use only this many images of the training set (10%% of them become the validation split)")
        parser.add_argument("--cache-dir", default=None, help="checkpoint cache (default: $AUTOML_HOME/checkpoints)")
        parser.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
        parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
        parser.add_argument("--format", choices=("text", "json"), default="text")

    def run(self, args: argparse.Namespace) -> int:
        from automl.training import train_or_load

        if args.epochs < 0:
            raise CommandError(f"--epochs must be >= 0, got {args.epochs}")
        if args.limit is not None and args.limit < 2:
            raise CommandError(f"--limit must be >= 2 images (one for training, one for validation), got {args.limit}")
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        try:
            ckpt = train_or_load(args.model, args.dataset, epochs=args.epochs, seed=args.seed, limit=args.limit,
                                 data_dir=args.data_dir, cache_dir=args.cache_dir, force=args.force,
                                 threads=getattr(args, "threads", None))
        except (DatasetError, ModelError) as exc:
            raise CommandError(str(exc)) from exc
        meta = ckpt.meta
        summary = {"model": meta["model"], "dataset": meta["dataset"], "epochs": meta["epochs"],
                   "test_acc": meta["test_acc"], "val_acc": meta["val_acc"],
                   "train_seconds": round(meta["train_seconds"], 1), "checkpoint": str(ckpt.path),
                   "reused": ckpt.reused}
        if args.format == "json":
            print_json(summary)
        else:
            state = "reused cached checkpoint" if ckpt.reused else f"trained in {summary['train_seconds']}s"
            print(f"{meta['model']} on {meta['dataset']}: test accuracy {100 * meta['test_acc']:.2f}% "
                  f"({state})\ncheckpoint: {ckpt.path}")
        return 0
