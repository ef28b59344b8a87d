"""`automl best`: the most accurate tracked policy for a model that meets latency/MAC/size/accuracy bounds."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from automl.cli.base import Command, CommandError, print_json, print_table


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text) if text.strip() not in ("0", "0.0") else 0.0
    if value > 1:
        raise argparse.ArgumentTypeError(f"accuracy is a fraction in [0, 1], got {text}")
    return value


def add_tracking_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in $AUTOML_HOME)")


class BestCommand(Command):
    description = ("Search every tracked search of a model and print the most accurate policy that meets all the "
                   "given constraints. Fine-tuned results are preferred over proxy ones; the output says which. "
                   "Exit code 1 when nothing fits.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="zoo model name, as given to `automl search`")
        parser.add_argument("--dataset", default=None, help="only searches on this dataset")
        parser.add_argument("--device", default=None, help="only searches for this device profile")
        parser.add_argument("--max-latency-ms", type=positive_float, default=None, metavar="X")
        parser.add_argument("--max-mac-ratio", type=positive_float, default=None, metavar="R",
                            help="MACs relative to the dense model (0..1)")
        parser.add_argument("--max-size-mb", type=positive_float, default=None, metavar="S",
                            help="model size in MB (10^6 bytes)")
        parser.add_argument("--min-accuracy", type=fraction, default=None, metavar="A", help="fraction, 0..1")
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument("--out", default=None, metavar="policy.json", help="also write the policy JSON here")
        add_tracking_argument(parser)

    def run(self, args: argparse.Namespace) -> int:
        from automl.query import Constraints, QueryError, TrackingReader
        from automl.tracking import resolve_tracking_uri

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
        reader = TrackingReader(resolve_tracking_uri(args.tracking_uri))
        try:
            constraints = Constraints(args.max_latency_ms, args.max_mac_ratio, args.max_size_mb, args.min_accuracy)
            result, message = reader.best_policy(args.model, args.dataset, args.device, constraints)
            if result is None:
                raise CommandError(message, exit_code=1)
            policy = reader.load_policy(result.candidate.run_id)
        except QueryError as exc:
            raise CommandError(str(exc)) from exc
        out = {**result.to_dict(), "policy": policy.to_dict()}
        if args.out:
            path = policy.save(Path(args.out))
            print(f"policy written to {path}", file=sys.stderr)
        if args.format == "json":
            print_json(out)
            return 0
        rows = [{"field": k, "value": v if not isinstance(v, dict) else json.dumps(v)}
                for k, v in out.items() if k != "policy"]
        print_table(rows)
        print(f"\n{result.note}")
        return 0
