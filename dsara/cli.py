"""The `dsara` command: one entry point, one subcommand module per area in `dsara/commands/`.

Each command module defines ``register(subparsers)`` which adds its parser(s) and sets
``func(args) -> int`` as the default. Errors of the user's making are `DsaraError`s and print as one
line without a traceback; so do operating-system errors (a full disk, a path that is a file) that
reach this far.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from . import __version__
from .errors import DsaraError, Interrupted

COMMAND_MODULES = [
    "dsara.commands.arch",
    "dsara.commands.compress",
    "dsara.commands.evaluate",
    "dsara.commands.experiment",
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
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.argv = argv  # a command's own words, for messages that say how to run it again
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
    except (OSError, UnicodeDecodeError) as e:  # a backstop: most paths already say more
        print(f"dsara: error: {os_message(e)}", file=sys.stderr)
        return 2


_NEGATIVE = re.compile(r"-[0-9.][0-9.eE+-]*(/[0-9.]+)?")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--eps -8/255`` as ``--eps=-8/255``: argparse takes a value starting with '-' that is
    not a plain number for an option and answers only "expected one argument"; joined, the value
    reaches its own check, which says what is wrong with it."""
    out: list[str] = []
    for word in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE.fullmatch(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def os_message(e: OSError | UnicodeDecodeError) -> str:
    """One line for an operating-system error no command caught: the path and what to do."""
    if isinstance(e, UnicodeDecodeError):
        return (f"a file given is not UTF-8 text ({e.reason} at byte {e.start}); check the file "
                "paths on the command line")
    path = f" {e.filename}" if e.filename else ""
    also = f" -> {e.filename2}" if e.filename2 else ""
    return (f"cannot use{path}{also}: {e.strerror or type(e).__name__}; check the path, its "
            "permissions and the free space")
