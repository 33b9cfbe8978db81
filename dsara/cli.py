"""The `dsara` command: one entry point, one subcommand module per area in `dsara/commands/`.

Each command module defines ``register(subparsers)`` which adds its parser(s) and sets
``func(args) -> int`` as the default. Errors of the user's making are `DsaraError`s and print as one
line without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import DsaraError, Interrupted

COMMAND_MODULES = [
    "dsara.commands.arch",
    "dsara.commands.evaluate",
    "dsara.commands.export",
    "dsara.commands.plot",
    "dsara.commands.search",
    "dsara.commands.study",
    "dsara.commands.train",
    "dsara.commands.transfer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsara",
        description="Search, sweep, export, retrain and evaluate accurate and robust architectures.")
    parser.add_argument("--version", action="version", version=f"dsara {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(f"dsara: {e}", file=sys.stderr)
        return 130
    except DsaraError as e:
        print(f"dsara: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsara: interrupted", file=sys.stderr)
        return 130
