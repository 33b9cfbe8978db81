"""Tables of a study: its trials (CSV or markdown, through pandas) and its best / Pareto trials."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from ..utils.files import write_text_atomic

FORMATS = ("csv", "md")


def front(study) -> list:
    """The Pareto-optimal complete trials (the best trial of a single-objective study)."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def metric_names(study) -> list[str]:
    return list(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])


def trials_frame(study, trials=None) -> pd.DataFrame:
    """One row per trial: number, state, objective values, swept params, retry and resume info."""
    names = metric_names(study)
    rows = []
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name}
        row |= {n: (t.values[i] if t.values else None) for i, n in enumerate(names)}
        row |= {f"params.{k}": v for k, v in t.params.items()}
        row["retry_of"] = t.user_attrs.get("retry_of")
        row["resumed_from_epoch"] = t.user_attrs.get("resumed_from_epoch")
        row["duration_s"] = (round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
                             if t.datetime_complete and t.datetime_start else None)
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else ["number", "state", *names])
    for col in ("retry_of", "resumed_from_epoch"):  # integers with gaps, not floats
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def front_frame(study) -> pd.DataFrame:
    """The Pareto front (or the best trial) with its parameters, best first objective first."""
    df = trials_frame(study, front(study))
    if df.empty:
        return df
    keep = [c for c in df.columns if c not in ("state", "retry_of", "resumed_from_epoch")]
    return df[keep].sort_values(metric_names(study)[0], ascending=False)


def state_counts(study) -> dict[str, int]:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    order = ("COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL")
    return {s: counts[s] for s in order if counts[s]} | {s: n for s, n in counts.items()
                                                         if s not in order}


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`; this does not)."""
    if df.empty:
        return "(no trials)"
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    head = [str(c) for c in df.columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells)])


def _cell(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_table(df: pd.DataFrame, fmt: str, out: str | Path | None = None) -> str:
    """The table as CSV or markdown text; written to `out` as well when given."""
    text = df.to_csv(index=False) if fmt == "csv" else markdown(df) + "\n"
    if out is not None:
        write_text_atomic(out, text)
    return text


def report_markdown(study) -> str:
    """Markdown report: states, the Pareto front with its parameters, then every trial."""
    counts = ", ".join(f"{n} {s.lower()}" for s, n in state_counts(study).items()) or "no trials"
    title = "Pareto front" if len(study.directions) > 1 else "Best trial"
    return (f"# Study {study.study_name}\n\nObjectives: {', '.join(metric_names(study))} "
            f"({', '.join(d.name.lower() for d in study.directions)}). Trials: {counts}.\n\n"
            f"## {title}\n\n{markdown(front_frame(study))}\n\n## Trials\n\n"
            f"{markdown(trials_frame(study))}\n")
