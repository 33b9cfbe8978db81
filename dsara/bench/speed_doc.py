"""Generated sections of docs/speed.md: a block between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` is replaced by a measurement script's tables (scripts/gpu_check.sh), so a
GPU run updates the page in place and leaves the hand-written text alone."""

from __future__ import annotations

import sys
from pathlib import Path

from ..utils.files import write_text_atomic


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the markers of section `name`, appending the section if it is new."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    page = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip() + ("\n\n" if page else "") + block + "\n"
    write_text_atomic(path, page)


def main(argv: list[str] | None = None) -> int:
    """``python -m dsara.bench.speed_doc PAGE NAME FILE``: FILE's text into section NAME of PAGE."""
    page, name, source = argv if argv is not None else sys.argv[1:]
    replace_section(Path(page), name, Path(source).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
