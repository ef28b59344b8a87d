"""Base class for CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


class CommandError(RuntimeError):
    """A user-facing error: printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class Command:
    """One CLI verb: declares its arguments and runs; `description` is the --help text."""

    description: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # pragma: no cover - overridden
        pass

    def run(self, args: argparse.Namespace) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None, file=None) -> None:
    """Plain aligned text table."""
    file = file or sys.stdout
    if not rows:
        print("(no rows)", file=file)
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:  # rstrip: no trailing blanks, so output can be diffed and pasted into docs
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=file)


def print_json(obj: Any, file=None) -> None:
    print(json.dumps(obj, indent=2, default=str), file=file or sys.stdout)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", help="dataset name (default: fashion-mnist)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the dataset files (default: the Debian package's location)")
