"""`automl compare`: policies or whole searches side by side, their Pareto plot, and a per-layer view."""

from __future__ import annotations

import argparse
import os
import sys

from automl.cli.base import Command, CommandError, print_json, print_table
from automl.cli.best_cmd import add_tracking_argument

COLUMNS = ["label", "run_id", "stage", "accuracy", "latency_ms", "mac_ratio", "size_mb", "front"]


class CompareCommand(Command):
    description = ("Compare candidate runs and/or whole searches (by MLflow run id): a side-by-side table, a Pareto "
                   "plot of accuracy vs latency (--out), and, when exactly two policies are compared, which scheme, "
                   "sparsity and bits each layer got in each.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("ids", nargs="+", metavar="RUN_OR_SEARCH_ID",
                            help="candidate run ids and/or search (parent run) ids")
        parser.add_argument("--out", default=None, metavar="pareto.png", help="write the Pareto plot (PNG) here")
        parser.add_argument("--format", choices=("table", "json"), default="table")
        add_tracking_argument(parser)

    def run(self, args: argparse.Namespace) -> int:
        from automl.query import QueryError, TrackingReader, layer_view, pareto_plot_data, save_pareto_plot
        from automl.tracking import resolve_tracking_uri

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
        reader = TrackingReader(resolve_tracking_uri(args.tracking_uri))
        try:
            cmp = reader.compare(args.ids)
            layers = None
            if len(cmp.entries) == 2:
                a, b = cmp.entries
                layers = {"a": a.run_id, "b": b.run_id,
                          "rows": layer_view(reader.load_policy(a.run_id), reader.load_policy(b.run_id))}
        except QueryError as exc:
            raise CommandError(str(exc)) from exc
        if not cmp.entries:
            raise CommandError("the given searches have no successful candidates yet", exit_code=1)
        plot = None
        if args.out:
            data = pareto_plot_data(cmp.entries, cmp.front, x=cmp.x)
            data["title"] += f" ({len(cmp.entries)} policies)"
            plot = str(save_pareto_plot(data, args.out))
            print(f"Pareto plot written to {plot}", file=sys.stderr)
        if args.format == "json":
            print_json({**cmp.to_dict(), "layers": layers, "plot": plot})
            return 0
        front = {c.run_id for c in cmp.front}
        rows = [{**c.to_dict(), "front": "*" if c.run_id in front else ""} for c in cmp.entries]
        print_table(rows, COLUMNS)
        print(f"\n* = on the accuracy/{cmp.x} Pareto front; label = search#candidate, '*' after it = fine-tuned")
        if layers:
            print(f"\nper layer: a = {layers['a']}, b = {layers['b']}")
            print_table(layers["rows"], ["layer", "a", "b", "same"])
        return 0
