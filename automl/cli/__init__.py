"""The `automl` command line: a table of commands, each a small class in its own module.

Commands are imported lazily so `automl --help` stays fast and never imports Ray or MLflow.
To add a command, write a `Command` subclass and add one line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from automl.cli.base import Command, CommandError

# name -> (module, class, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("automl.cli.models_cmd", "ModelsCommand", "list the model zoo with parameters and MACs"),
    "train": ("automl.cli.train_cmd", "TrainCommand", "train (or reuse the cached) base model and print test accuracy"),
    "apply": ("automl.cli.apply_cmd", "ApplyCommand", "apply a policy to a checkpoint: prune, quantize, fine-tune, export"),
    "search": ("automl.cli.search_cmd", "SearchCommand", "run a compression search on Ray, tracked in MLflow"),
    "best": ("automl.cli.best_cmd", "BestCommand", "the most accurate tracked policy for a model under constraints"),
    "compare": ("automl.cli.compare_cmd", "CompareCommand", "compare policies/searches: table, Pareto plot, per layer"),
    "serve": ("automl.cli.serve_cmd", "ServeCommand", "serve the HTTP API (FastAPI + uvicorn, docs at /docs)"),
    "latency": ("automl.cli.latency_cmd", "LatencyCommand", "measure, profile, predict and refit latency per runtime"),
    "device-agent": ("automl.cli.device_agent_cmd", "DeviceAgentCommand", "serve latency measurements on a device"),
}


def _load(name: str) -> Command:
    module, cls, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), cls)()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automl",
        description="Search per-layer pruning schemes and bit-widths for a PyTorch model, ranked by latency "
                    "measured on the runtime that will run it.")
    from automl import __version__

    parser.add_argument("--version", action="version", version=f"compress-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints --help / --version, or the "invalid choice" error and exits 2
        return 2
    command = _load(argv[0])
    parser = argparse.ArgumentParser(prog=f"automl {argv[0]}", description=command.description)
    command.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(command.run(args) or 0)
    except CommandError as exc:
        print(f"automl {argv[0]}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"automl {argv[0]}: interrupted", file=sys.stderr)
        return 130
