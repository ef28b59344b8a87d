"""`automl quickstart`: what `make run` runs. For now: train and evaluate the base ResNet-20."""

from __future__ import annotations

import argparse

from automl.cli.base import Command
from automl.cli.train_cmd import TrainCommand


class QuickstartCommand(Command):
    description = "Train (or reuse) ResNet-20 on Fashion-MNIST and print its test accuracy."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--epochs", type=int, default=3)
        parser.add_argument("--data-dir", default=None)

    def run(self, args: argparse.Namespace) -> int:
        train_args = argparse.Namespace(model="resnet20", dataset="fashion-mnist", data_dir=args.data_dir,
                                        epochs=args.epochs, seed=0, limit=None, cache_dir=None, force=False,
                                        format="text")
        return TrainCommand().run(train_args)
