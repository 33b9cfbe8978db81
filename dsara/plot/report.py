"""One self-contained HTML page about a study: its table, its front, its best architectures.

Every picture is embedded as a base64 data URI (PNG for plots, SVG for cell drawings), so the page
can be mailed or archived as one file and opens without a network or a server. All text from the
study (names, parameters, attributes) is HTML-escaped; the page runs no script.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ..arch.archfile import Architecture
from ..errors import DsaraError
from ..study.manage import stored_definition
from ..utils.files import ensure_dir, write_text_atomic
from . import _mpl
from .cells import draw_cell
from .search import curves_figure, load_run
from .study import complete_trials, objective_names, pareto_trials, plot_study

MAX_ARCHITECTURES = 4  # best trials drawn in full; the table lists every trial
_MIME = {".png": "image/png", ".svg": "image/svg+xml"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.trial { border-top: 2px solid #ddd; margin-top: 2em; }
pre { background: #f6f6f6; padding: 0.7em; font-size: 0.85em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
.cells { display: flex; flex-wrap: wrap; align-items: center; gap: 0.5em 2em; }
.cells img { max-width: 48%; }
.note { color: #a33; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<img src="data:{_MIME[path.suffix]};base64,{data}" alt="{html.escape(alt)}">')


def _trials_table(study) -> str:
    df = study.trials_dataframe(attrs=("number", "values", "params", "state", "duration"))
    if df.empty:
        return "<p>No trials yet.</p>"
    if "duration" in df:
        df["duration"] = df["duration"].map(lambda d: "" if d != d else str(d).split(".")[0])
    return df.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4f}", na_rep="",
                      border=0)


def _run_dir(trial, artifact_root: str | None) -> Path | None:
    run_dir = trial.user_attrs.get("run_dir")
    if not run_dir:
        return None
    path = Path(run_dir)
    if not path.is_absolute() and artifact_root:
        path = Path(artifact_root) / path
    return path


def _architecture_section(study, trial, names: list[str], tmp: Path) -> str:
    values = ", ".join(f"{html.escape(n)} = {v:.4f}" for n, v in zip(names, trial.values, strict=True))
    params = ", ".join(f"{html.escape(k)} = {html.escape(repr(v))}" for k, v in trial.params.items())
    parts = [f'<section class="trial"><h3>Trial #{trial.number}</h3><p>{values}'
             f"{'<br>' + params if params else ''}</p>"]
    try:
        arch = Architecture.from_dict(trial.user_attrs["architecture"], f"trial {trial.number}")
    except (KeyError, DsaraError) as e:
        parts.append(f'<p class="note">No drawable architecture: {html.escape(str(e))}</p>')
    else:
        parts.append(f"<pre>{html.escape(arch.genotype.to_text())}</pre>")
        parts.append('<div class="cells">')
        for cell_type, cell in arch.genotype.cells.items():
            stem = tmp / f"trial{trial.number}_{cell_type}"
            (svg,) = draw_cell(cell, stem, f"trial {trial.number}: {cell_type} cell", ("svg",))
            parts.append(_img(svg, f"trial {trial.number} {cell_type} cell"))
        parts.append("</div>")
    run_dir = _run_dir(trial, study.user_attrs.get("artifact_root"))
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        parts.append(f'<p class="note">No search curves: run directory '
                     f"{html.escape(str(run_dir)) if run_dir else '(not recorded)'} not found.</p>")
    else:
        fig = curves_figure(load_run(run_dir), f"trial {trial.number}")
        (curves,) = _mpl.save(fig, tmp / f"search{trial.number}", ("png",))
        parts.append(_img(curves, f"trial {trial.number} search curves"))
    parts.append("</section>")
    return "\n".join(parts)


def render_report(study, tmp: Path) -> str:
    """The report's HTML; figures are drawn into tmp and embedded."""
    from ..version import __version__

    names = objective_names(study)
    name = html.escape(study.study_name)
    definition = stored_definition(study)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    done = complete_trials(study)
    body = [f"<h1>Study {name}</h1>",
            f'<p class="meta">{len(study.trials)} trials, {len(done)} complete · objectives: '
            f"{html.escape(', '.join(names))} · generated {now} by dsara {__version__}</p>"]
    if done:
        plot_study(study, tmp / "study", formats=("png",))
        body += ["<h2>Accuracy–robustness front</h2>",
                 _img(tmp / "study" / "pareto.png", "Pareto front"),
                 "<h2>Parameter importances</h2>",
                 _img(tmp / "study" / "importances.png", "parameter importances")]
        best = sorted(pareto_trials(study), key=lambda t: t.values[0], reverse=True)
        body.append(f"<h2>Best architectures ({min(len(best), MAX_ARCHITECTURES)} of "
                    f"{len(best)} on the front)</h2>")
        body += [_architecture_section(study, t, names, tmp) for t in best[:MAX_ARCHITECTURES]]
    else:
        body.append('<p class="note">No complete trials yet: nothing to plot.</p>')
    body += ["<h2>Trials</h2>", _trials_table(study)]
    if definition is not None:
        body += ["<h2>Definition</h2>",
                 f"<pre>{html.escape(json.dumps(definition, indent=2, default=str))}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>dsara study {name}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(study, out_path: str | Path) -> Path:
    """Write the study's self-contained HTML report to out_path (atomically); returns the path."""
    out_path = Path(out_path)
    ensure_dir(out_path.parent, "output folder")
    with tempfile.TemporaryDirectory(prefix="dsara-report-") as tmp:
        text = render_report(study, Path(tmp))
    write_text_atomic(out_path, text)
    return out_path


