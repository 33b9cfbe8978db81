"""Where `dsara evaluate` writes its report, so that a quick check never replaces a fuller one.

``evaluation.json`` beside the checkpoint is the run's main evaluation: the one `dsara export
--format robustbench` builds its card from. A new evaluation replaces it when it covers it (the
same checkpoint epoch and eps, at least as many images, every attack it had) or when it is stale
(another epoch); otherwise the new report goes beside it, named by its setting
(``evaluation-10img-8of255-clean+fgsm.json``), and the main one is kept. ``--force`` replaces it
anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAIN = "evaluation.json"


def describe(report: dict[str, Any]) -> str:
    """One phrase naming an evaluation's setting: attacks, eps, images."""
    eps = float(report.get("eps", 0))
    k = eps * 255
    eps_text = f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"
    return (f"{', '.join(report.get('accuracy', {}))} at eps {eps_text} "
            f"on {report.get('n')} test images")


def covers(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """True if `new` makes `old` redundant, or `old` is of another checkpoint epoch."""
    if new.get("meta", {}).get("epoch") != old.get("meta", {}).get("epoch"):
        return True
    return (abs(float(new.get("eps", -1)) - float(old.get("eps", -2))) < 1e-9
            and int(new.get("n", 0)) >= int(old.get("n", 0))
            and set(old.get("accuracy", {})) <= set(new.get("accuracy", {})))


def side_name(report: dict[str, Any]) -> str:
    eps = float(report["eps"]) * 255
    eps_tag = f"{round(eps)}of255" if abs(eps - round(eps)) < 1e-6 else f"{report['eps']:g}"
    return f"evaluation-{report['n']}img-{eps_tag}-{'+'.join(report['accuracy'])}.json"


def choose_path(folder: Path, report: dict[str, Any], force: bool) -> tuple[Path, str | None]:
    """(where to write `report`, a note when the main evaluation is kept)."""
    main = folder / MAIN
    if force or not main.is_file():
        return main, None
    try:
        old = json.loads(main.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: the new one replaces it
        return main, None
    if covers(report, old):
        return main, None
    return folder / side_name(report), (
        f"{main} is kept: it holds a fuller evaluation ({describe(old)}); this one "
        f"({describe(report)}) goes beside it; --force replaces the main one")
