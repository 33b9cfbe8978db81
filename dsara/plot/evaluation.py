"""One self-contained HTML page about evaluations (`evaluation.json` of `dsara evaluate`) and
transfer matrices (`transfer_matrix.json` of `dsara transfer-matrix`): the accuracy table with
the detector's columns, each attack's constants and surrogates, AI-GAN's speed, the heat map, the
sanity checks' accuracy vs eps and vs steps, and the evaluated run's training curves.
Pictures are embedded; all text from the files is HTML-escaped; the page runs no script."""

from __future__ import annotations

import html
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ..errors import DsaraError
from ..evaluate.suite import details_table
from ..utils.files import write_text_atomic
from . import _mpl
from .report import _CSS, _img
from .train import curves_figure, load_train_run, sanity_curves, sanity_figure
from .transfer import plot_transfer_matrix


def find_reports(targets: list[str | Path]) -> list[Path]:
    """Each target as a JSON file, or a directory holding evaluation.json / transfer_matrix.json."""
    found = []
    for t in map(Path, targets):
        if t.is_file():
            found.append(t)
        elif t.is_dir():
            hits = [t / n for n in ("evaluation.json", "transfer_matrix.json") if (t / n).is_file()]
            if not hits:
                raise DsaraError(f"{t} holds no evaluation.json or transfer_matrix.json; run "
                                 "`dsara evaluate` or `dsara transfer-matrix` first")
            found += hits
        else:
            raise DsaraError(f"{t} does not exist")
    return found


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DsaraError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict) or not ("accuracy" in data and ("models" in data
                                                                  or "worst_case" in data)):
        raise DsaraError(f"{path} is neither an evaluation.json nor a transfer_matrix.json")
    return data


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _pictures(path: Path, d: dict, tmp: Path, index: int) -> str:
    """The sanity curves of the evaluation, and the training curves of the run it evaluated."""
    parts = []
    if set(sanity_curves(d)) == {"eps", "steps"}:
        fig = sanity_figure(d, str(d.get("meta", {}).get("model") or path.parent.name))
        (png,) = _mpl.save(fig, tmp / f"sanity{index}", ("png",))
        parts.append("<h3>Sanity checks: accuracy vs eps and vs attack steps</h3>"
                     + _img(png, "accuracy vs eps and vs attack steps"))
    checkpoint = Path(str(d.get("meta", {}).get("checkpoint") or path))
    for run_dir in dict.fromkeys((checkpoint.parent, path.parent)):
        if (run_dir / "metrics.json").is_file():
            run = load_train_run(run_dir)
            if run["metrics"].get("history"):
                fig = curves_figure(run, run_dir.name)
                (png,) = _mpl.save(fig, tmp / f"train{index}", ("png",))
                parts.append("<h3>Training</h3>" + _img(png, "training curves"))
            break
    return "".join(parts)


def _evaluation_section(path: Path, d: dict, tmp: Path, index: int) -> str:
    e = html.escape
    meta = d.get("meta", {})
    det = d.get("details", {}).get("detection")
    head = ["attack", "accuracy", "time (s)"] + (["successful", "detected", "acc. with rejection"]
                                                 if det else [])
    rows = []
    for name, acc in d["accuracy"].items():
        cells = [e(name), _pct(acc), f"{d.get('seconds', {}).get(name, 0):.1f}"]
        if det:
            a = det["attacks"].get(name)
            cells += ([str(a["successful_adversarial"]), _pct(a["detection_rate"]),
                       _pct(a["accuracy_with_rejection"])] if a else
                      ["", "", _pct(det["clean_accuracy_with_rejection"])] if name == "clean"
                      else ["", "", ""])
        rows.append(cells)
    rows.append(["<b>worst case</b>", _pct(d["worst_case"]), ""]
                + (["", "", _pct(det["worst_case_with_rejection"])] if det else []))
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
             + "</table>")
    title = (f"{e(str(meta.get('model')))} · {e(str(meta.get('train_method')))} · "
             f"{e(str(meta.get('dataset')))} {e(str(meta.get('split', '')))}")
    info = (f"eps {d['eps'] * 255:.2f}/255, n = {d['n']}, {e(d.get('mode', ''))} mode, "
            f"{e(d.get('dtype', ''))}, device {e(str(meta.get('device')))}; "
            f"checkpoint {e(str(meta.get('checkpoint')))}")
    notes = details_table(d.get("details", {}))
    return (f'<section class="trial"><h2>{title}</h2><p class="meta">{info}<br>'
            f"from {e(str(path))}</p>{table}"
            + (f"<pre>{e(notes)}</pre>" if notes else "") + _pictures(path, d, tmp, index)
            + "</section>")


def _matrix_section(path: Path, d: dict, tmp: Path, index: int) -> str:
    e = html.escape
    (png,) = plot_transfer_matrix(d, tmp / f"matrix{index}", ("png",))
    names = d["models"]
    head = "<tr><th>crafted on \\ scored on</th>" + "".join(f"<th>{e(n)}</th>" for n in names)
    clean = "<tr><td>clean</td>" + "".join(f"<td>{_pct(d['clean'][n])}</td>" for n in names)
    body = "".join(f"<tr><td>{e(n)}</td>" + "".join(f"<td>{_pct(v)}</td>" for v in row) + "</tr>"
                   for n, row in zip(names, d["accuracy"], strict=True))
    runs = "".join(f"<li>{e(n)}: {e(str(r.get('run')))} ({e(str(r.get('model')))}, "
                   f"{e(str(r.get('train_method')))})</li>"
                   for n, r in d.get("runs", {}).items())
    return (f'<section class="trial"><h2>Transfer matrix: {e(d["attack"])}</h2>'
            f'<p class="meta">eps {d["eps"] * 255:.2f}/255, n = {d["n"]}, '
            f'{e(str(d.get("dataset")))} {e(str(d.get("split", "")))}; from {e(str(path))}</p>'
            f"{_img(png, 'transfer heat map')}<table>{head}</tr>{clean}</tr>{body}</table>"
            f"<ul>{runs}</ul></section>")


def render_evaluation_report(paths: list[Path], tmp: Path) -> str:
    from ..version import __version__

    sections = []
    for i, path in enumerate(paths):
        d = _load(path)
        sections.append(_matrix_section(path, d, tmp, i) if "models" in d
                        else _evaluation_section(path, d, tmp, i))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>dsara evaluation report</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>Evaluation report</h1><p class=\"meta\">{len(paths)} file(s) · generated "
            f"{now} by dsara {__version__}</p>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_evaluation_report(targets: list[str | Path], out_path: str | Path) -> Path:
    paths = find_reports(targets)
    with tempfile.TemporaryDirectory(prefix="dsara-report-") as tmp:
        text = render_evaluation_report(paths, Path(tmp))
    return write_text_atomic(out_path, text)
