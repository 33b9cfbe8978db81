"""How a training run went, and what its evaluation's sanity checks measured.

- ``train_curves``: from a `dsara train` run directory's ``metrics.json`` (one record per epoch):
  the training loss terms, clean and PGD accuracy on the held-out validation split (best.pt's
  epoch marked) and the learning rate of each epoch;
- ``<evaluation>_sanity``: from an ``evaluation*.json`` of ``dsara evaluate --sanity``: accuracy
  against eps (PGD-20 at 0, 1/4, 1/2, 1 and 2 x eps) and against attack steps (1, 5, 20), the
  two curves the sanity checks require to fall (Carlini et al. 2019).

A run still in progress plots the epochs it has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import DsaraError
from ..utils.files import read_text
from . import _mpl

CURVES = "train_curves"


def load_train_run(run_dir: str | Path) -> dict:
    """metrics.json (best epoch and history) and config.json of a `dsara train` run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        hint = ("; it is a search run: dsara plot search" if (run_dir / "metrics.jsonl").is_file()
                else "; pass the directory a `dsara train` wrote")
        raise DsaraError(f"{run_dir} is not a training run directory (no metrics.json){hint}")
    try:
        metrics = json.loads(read_text(path, "training metrics"))
        config_path = run_dir / "config.json"
        config = json.loads(read_text(config_path, "train config")) if config_path.is_file() else {}
    except json.JSONDecodeError as e:
        raise DsaraError(f"{run_dir}'s metrics.json or config.json is not valid JSON ({e.msg}); "
                         "the run's next epoch rewrites metrics.json") from None
    return {"metrics": metrics, "config": config}


def plot_train(run_dir: str | Path, out_dir: str | Path | None = None,
               formats=_mpl.FORMATS) -> list[Path]:
    """Draw a training run's curves, and the sanity pictures of each of its evaluations that has
    them, into out_dir (default RUN_DIR/plots); returns the files (none before the first epoch)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    run = load_train_run(run_dir)
    paths = []
    if run["metrics"].get("history"):
        paths += _mpl.save(curves_figure(run, run_dir.name), out_dir / CURVES, formats)
    for evaluation in sorted(run_dir.glob("evaluation*.json")):
        paths += plot_sanity(evaluation, out_dir, formats)
    return paths


def _terms(history: list[dict]) -> list[str]:
    names: list[str] = []
    for record in history:
        names += [k for k in record.get("train", {}) if k not in names]
    return names


def curves_figure(run: dict, title: str = ""):
    history = run["metrics"]["history"]
    config = run["config"]
    epochs = [r["epoch"] for r in history]
    total = max(int(config.get("epochs") or 0), epochs[-1])
    fig = _mpl.new_figure(13, 3.9)
    from matplotlib.ticker import MaxNLocator

    loss, acc, lr = fig.subplots(1, 3)
    for name in _terms(history):
        values = [r.get("train", {}).get(name, math.nan) for r in history]
        loss.plot(epochs, values, marker=".", lw=2 if name == "loss" else 1,
                  ls="-" if name == "loss" else "--", label=name)
    loss.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", title="loss")
    loss.legend(fontsize=8)
    for key, label in (("val_clean", "clean"), ("val_robust", f"PGD-{config.get('val_steps', '')}")):
        acc.plot(epochs, [100 * r[key] for r in history], marker=".", label=f"{label} (val)")
    best = run["metrics"].get("best", {}).get("epoch") or 0
    if best:
        acc.axvline(best, color="0.4", ls=":", lw=1, label=f"best.pt (epoch {best})")
    acc.set(xlabel="epoch", ylabel="accuracy on the validation split (%)", title="accuracy")
    acc.legend(fontsize=8)
    lrs = [r["lr"] for r in history]
    lr.step(epochs, lrs, where="mid", marker=".", color="tab:green")
    if min(lrs) > 0 and max(lrs) / min(lrs) > 20:  # piecewise drops read better on a log axis
        lr.set_yscale("log")
    else:
        lr.set_ylim(bottom=0)
    lr.set(xlabel="epoch", ylabel="learning rate", title=f"learning rate "
           f"({config.get('schedule', '?')})")
    for ax in (loss, acc, lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, total + 0.5)
        ax.grid(alpha=0.3)
    what = " · ".join(str(x) for x in (title, config.get("method"), config.get("dataset")) if x)
    fig.suptitle(f"{what} · {len(history)}/{total} epochs")
    return fig


def sanity_curves(report: dict) -> dict[str, dict]:
    """{"eps": curve, "steps": curve} of an evaluation's sanity checks (those recorded)."""
    out = {}
    for check in report.get("sanity") or []:
        curve = check.get("curve") or {}
        if "accuracy" in curve:  # against steps (at one eps), else against eps
            out["steps" if "steps" in curve else "eps"] = curve
    return out


def sanity_figure(report: dict, title: str = ""):
    curves = sanity_curves(report)
    fig = _mpl.new_figure(10, 3.9)
    by_eps, by_steps = fig.subplots(1, 2, sharey=True)
    c = curves["eps"]
    by_eps.plot([255 * e for e in c["eps"]], [100 * a for a in c["accuracy"]], marker="o")
    by_eps.axvline(255 * report["eps"], color="0.4", ls=":", lw=1,
                   label=f"evaluated eps {255 * report['eps']:.3g}/255")
    by_eps.set(xlabel="eps (x/255)", ylabel="accuracy (%)", title=f"accuracy vs eps ({c['attack']})")
    c = curves["steps"]
    by_steps.plot(c["steps"], [100 * a for a in c["accuracy"]], marker="o", color="tab:orange")
    by_steps.set_xscale("log")
    by_steps.set_xticks(c["steps"], [str(s) for s in c["steps"]])
    by_steps.set(xlabel="attack steps", title=f"accuracy vs steps at eps {255 * c['eps']:.3g}/255")
    for ax, curve in ((by_eps, curves["eps"]), (by_steps, curves["steps"])):
        if curve.get("clean") is not None:
            ax.axhline(100 * curve["clean"], color="tab:green", ls="--", lw=1, label="clean")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = (report.get("sanity_subset") or {}).get("n", "?")
    failed = [s["name"] for s in report.get("sanity") or [] if not s.get("passed")]
    fig.suptitle(f"{title + ' · ' if title else ''}sanity checks on {n} test images: "
                 + (f"FAILED: {'; '.join(failed)}" if failed else "all passed"), fontsize=10)
    return fig


def plot_sanity(evaluation: str | Path, out_dir: str | Path | None = None,
                formats=("png",)) -> list[Path]:
    """Draw accuracy vs eps and vs steps of an evaluation JSON that holds sanity curves, as
    <evaluation name>_sanity.png beside it (or in out_dir); [] when it holds none."""
    evaluation = Path(evaluation)
    try:
        report = json.loads(read_text(evaluation, "evaluation report"))
    except json.JSONDecodeError as e:
        raise DsaraError(f"{evaluation} is not valid JSON ({e.msg}); run dsara evaluate again") \
            from None
    if set(sanity_curves(report)) != {"eps", "steps"}:
        return []
    title = str((report.get("meta") or {}).get("model") or evaluation.parent.name)
    out = Path(out_dir) if out_dir is not None else evaluation.parent
    return _mpl.save(sanity_figure(report, title), out / f"{evaluation.stem}_sanity", formats)
