"""`python -m histo_core <command>`: datasets, train, evaluate, lr-find, predict, runs, export, embed, similar, label-errors, explain-quality, slide, study.

Each command lives in histo_core/commands/<name>.py with `register(subparsers)`. A user error
(`HistoError`) prints one line on stderr and exits 2; `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from histo_core.errors import HistoError
from histo_core.fsutil import _json_default

COMMAND_MODULES = ("datasets", "train", "predict", "runs", "tasks", "inspect", "slide", "study")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's own default prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m histo_core", description="Histo Explorer, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"histo_core.commands.{name}").register(sub)
    return parser


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """Print `payload` as JSON when --json was given, else the human `text`."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=_default))
    else:
        print(text)


def _default(o: Any) -> Any:

    return _json_default(o)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
