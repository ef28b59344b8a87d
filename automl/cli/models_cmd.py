"""`automl models`: the zoo with parameter and MAC counts at a dataset's input size."""

from __future__ import annotations

import argparse

from automl.cli.base import Command, CommandError, print_json, print_table
from automl.data import DatasetError, dataset_info
from automl.models import ZOO, build_model, count_macs, prunable_layers


class ModelsCommand(Command):
    description = "List the model zoo: parameters, MACs per sample and prunable layers at the dataset's input size."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", default="fashion-mnist", help="input size and classes from this dataset")
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument("--layers", metavar="MODEL", help="list the prunable layers of one model instead")

    def run(self, args: argparse.Namespace) -> int:
        try:
            info = dataset_info(args.dataset)
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        shape = (info.in_channels, info.image_size, info.image_size)
        if args.layers:
            from automl.models import ModelError

            try:
                model = build_model(args.layers, info.in_channels, info.num_classes, info.image_size)
            except ModelError as exc:
                raise CommandError(str(exc)) from exc
            rows = [{"index": l.index, "name": l.name, "kind": l.kind, "in": l.in_channels, "out": l.out_channels,
                     "kernel": "x".join(map(str, l.kernel_size)), "stride": l.stride[0], "groups": l.groups,
                     "MACs": l.macs} for l in prunable_layers(model, shape)]
        else:
            rows = []
            for name, entry in ZOO.items():
                model = build_model(name, info.in_channels, info.num_classes, info.image_size)
                report = count_macs(model, shape)
                rows.append({"model": name, "params": report.params, "MMACs": round(report.total / 1e6, 2),
                             "prunable_layers": len(report.per_layer), "description": entry.description})
        if args.format == "json":
            print_json(rows)
        else:
            print_table(rows)
        return 0
