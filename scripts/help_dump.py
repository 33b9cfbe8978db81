"""Every `dsara ... --help` text, one after the other, for diffing two versions of the package.

    python scripts/help_dump.py > before.txt     # on the old code
    python scripts/help_dump.py > after.txt      # on the new code
    diff before.txt after.txt                    # empty: no command, flag or help text changed

Walks the parser tree `dsara.cli.build_parser()` builds (every command module imported) and prints
each parser's help under a header naming its command path; COLUMNS is fixed so the wrapping does
not depend on the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["COLUMNS"] = "100"

from dsara.cli import build_parser  # noqa: E402  (after COLUMNS: argparse reads it when formatting)


def walk(parser: argparse.ArgumentParser, path: list[str]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, [*path, name])


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    for path, parser in walk(build_parser(), ["dsara"]):
        sys.stdout.write(f"===== {' '.join(path)} --help\n{parser.format_help()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
