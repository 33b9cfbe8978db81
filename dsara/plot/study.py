"""A study's accuracy-robustness front and what its swept parameters matter for.

- ``pareto``: every complete trial as a point (x = first objective, e.g. clean accuracy; y = the
  second, e.g. PGD accuracy) labelled with its trial number, the Pareto-optimal ones joined by a
  staircase;
- ``importances``: per objective, the importance of each swept parameter (`optuna.importance`:
  fANOVA where scikit-learn is installed, PED-ANOVA otherwise), or a note saying why there is none
  yet (too few complete trials, nothing swept).

Takes an `optuna.Study`; this module never opens a storage itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import DsaraError
from . import _mpl

MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA on fewer points ranks noise
IMPORTANCE_SEED = 0  # fANOVA fits a random forest: seeded, so the same study gives the same figure


def complete_trials(study) -> list:
    import optuna

    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values is not None]


def objective_names(study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def pareto_trials(study) -> list:
    """The best trials: the Pareto front of a multi-objective study, the best one otherwise."""
    if not complete_trials(study):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def plot_study(study, out_dir: str | Path, formats=_mpl.FORMATS) -> list[Path]:
    """Write ``pareto`` and ``importances`` figures of a study into out_dir; returns the files."""
    if not complete_trials(study):
        raise DsaraError(f"study {study.study_name!r} has no complete trials yet; run "
                         f"`dsara study run {study.study_name}` first")
    out_dir = Path(out_dir)
    return (_mpl.save(pareto_figure(study), out_dir / "pareto", formats)
            + _mpl.save(importance_figure(study), out_dir / "importances", formats))


def _is_fraction(values: list[float]) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def pareto_figure(study):
    trials, names = complete_trials(study), objective_names(study)
    best = {t.number for t in pareto_trials(study)}
    fig = _mpl.new_figure(6.5, 5)
    ax = fig.add_subplot()
    if len(names) == 1:  # one objective: its value per trial, the best marked
        xs, ys = [t.number for t in trials], [t.values[0] for t in trials]
        xlabel, ylabel = "trial", names[0]
    else:
        xs, ys = [t.values[0] for t in trials], [t.values[1] for t in trials]
        xlabel, ylabel = names[0], names[1]
    on = [i for i, t in enumerate(trials) if t.number in best]
    off = [i for i, t in enumerate(trials) if t.number not in best]
    ax.scatter([xs[i] for i in off], [ys[i] for i in off], c="0.6", s=30, label="trial")
    ax.scatter([xs[i] for i in on], [ys[i] for i in on], c="tab:red", s=45, zorder=3,
               label="Pareto-optimal" if len(names) > 1 else "best")
    if len(names) > 1 and len(on) > 1:
        front = sorted((xs[i], ys[i]) for i in on)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red",
                lw=1, alpha=0.6)
    at: dict[tuple[float, float], list] = {}  # trials with equal scores share one label
    for x, y, t in zip(xs, ys, trials, strict=True):
        at.setdefault((x, y), []).append(t.number)
    for (x, y), numbers in at.items():
        ax.annotate(",".join(f"#{n}" for n in numbers), (x, y), xytext=(4, 4), fontsize=8,
                    textcoords="offset points",
                    color="tab:red" if numbers[0] in best else "0.35")
    _percent_axes(ax, xs if len(names) > 1 else None, ys)
    directions = [d.name.lower() for d in study.directions]
    ax.set(xlabel=f"{xlabel} ({directions[0]})" if len(names) > 1 else xlabel,
           ylabel=f"{ylabel} ({directions[-1] if len(names) == 1 else directions[1]})",
           title=f"study {study.study_name}: {len(trials)} complete trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(0.12)
    return fig


def _percent_axes(ax, xs, ys) -> None:
    """Accuracies stored as fractions read better as percentages."""
    if xs is not None and _is_fraction(xs):
        _mpl.percent_axis(ax.xaxis)
    if _is_fraction(ys):
        _mpl.percent_axis(ax.yaxis)


def _evaluator():
    """fANOVA (Optuna's default) where scikit-learn is installed, else PED-ANOVA (numpy only)."""
    import optuna

    try:
        return optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), "fANOVA"
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"


def importances(study) -> tuple[dict[str, dict[str, float]], str]:
    """({objective: {param: importance}}, the evaluator's name), or ({}, why there are none)."""
    import optuna

    trials = complete_trials(study)
    params = sorted({p for t in trials for p in t.params})
    if not params:
        return {}, "the study sweeps no parameters"
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials "
                    f"(this study has {len(trials)})")
    out, label = {}, ""
    for i, (name, direction) in enumerate(zip(objective_names(study), study.directions, strict=True)):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        evaluator, label = _evaluator()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:  # lower target = better, as PED-ANOVA assumes; fANOVA is indifferent to the sign
                imp = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=lambda t, i=i, s=sign: s * t.values[i])
            except (RuntimeError, ValueError) as e:  # e.g. a parameter that never varied
                return {}, f"optuna could not compute importances: {e}"
        if not any(imp.values()):
            why = str(caught[-1].message) if caught else "every parameter scored 0"
            return {}, f"{label} found no importance for {name}: {why}"
        out[name] = imp
    return out, label


def importance_figure(study):
    values, how = importances(study)
    fig = _mpl.new_figure(4 * max(1, len(values)) + 1, 3.6 if values else 1.6)
    if not values:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no parameter importances:\n{how}", ha="center", va="center",
                fontsize=11, color="0.3", wrap=True)
        fig.suptitle(f"study {study.study_name}: parameter importances")
        return fig
    axes = fig.subplots(1, len(values), sharey=True, squeeze=False)[0]
    params = sorted({p for v in values.values() for p in v}, key=lambda p: -max(
        v.get(p, 0.0) for v in values.values()))
    for ax, (name, imp) in zip(axes, values.items(), strict=True):
        ax.barh(params[::-1], [imp.get(p, 0.0) for p in params[::-1]], color="tab:blue")
        ax.set(xlim=(0, 1), xlabel=f"importance ({how}, sums to 1)", title=name)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"study {study.study_name}: parameter importances "
                 f"({len(complete_trials(study))} complete trials)")
    return fig
