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

from .errors import DsaraError, Interrupted
from .version import __version__

# command -> (module that registers it, one-line help); only the command being run is imported,
# so `dsara --help` and a mistyped command answer without importing torch
COMMANDS = {
    "arch": ("dsara.commands.arch", "inspect architectures and search spaces"),
    "compress": ("dsara.commands.compress", "GDWS or low-rank compression of a trained run"),
    "evaluate": ("dsara.commands.evaluate", "evaluate a trained model under attacks"),
    "experiment": ("dsara.commands.experiment", "searched vs random vs published cells at "
                   "equal parameters, over seeds"),
    "export": ("dsara.commands.export", "export a trained network (torch.export, ONNX, "
               "RobustBench folder, genotype text)"),
    "plot": ("dsara.commands.plot", "draw cells, search curves, training curves and study "
             "fronts (SVG and PNG)"),
    "report": ("dsara.commands.plot", "one self-contained HTML page about a study or runs"),
    "search": ("dsara.commands.search", "run or resume a DSARA architecture search"),
    "study": ("dsara.commands.study", "persistent Optuna sweeps of DSARA searches"),
    "train": ("dsara.commands.train", "adversarially retrain an architecture or a baseline"),
    "transfer-matrix": ("dsara.commands.transfer", "transfer attacks between every pair of runs"),
}
COMMAND_MODULES = sorted({module for module, _ in COMMANDS.values()})


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given `argv`, only the module of the command named there is imported (the
    others appear in the help by name)."""
    parser = argparse.ArgumentParser(
        prog="dsara",
        description="Search, sweep, export, retrain and evaluate accurate and robust architectures.")
    parser.add_argument("--version", action="version", version=f"dsara {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = next((w for w in argv or [] if not w.startswith("-")), None)
    if argv is None or named in COMMANDS:
        modules = COMMAND_MODULES if argv is None else [COMMANDS[named][0]]
        for name in modules:
            importlib.import_module(name).register(sub)
    else:
        for name, (_, text) in COMMANDS.items():
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(argv)
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
