"""The result of an experiment: per source mean +- std over its runs, "searched minus best random",
and the search diagnostics, as pandas frames and markdown.

Accuracies are fractions in [0, 1] in the results and percentages in the tables. The std is the
sample standard deviation over a source's runs (its seeds; for random sources every cell of every
seed); with one run there is none. "Searched minus best random" compares each seed of a searching
source with the best random cell on the same metric (the strongest random competitor, chosen
after the fact, so the comparison favours random cells), and also gives the share of random cells
the searched run beats.
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from ..study.report import markdown
from .definition import SEARCHING
from .judge import check_runs, compare_sources, verdict

METRICS = {"clean": "clean", "pgd20": "PGD-20", "cw": "CW", "autoattack": "AutoAttack"}


WORST = "worst case %"  # per sample over every attack, AutoAttack included where it ran


def worst_case(r: dict[str, Any]) -> float | None:
    """A unit's worst case per sample: over every attack and AutoAttack on the AutoAttack subset
    when AutoAttack ran, else over the attacks of the test subset (None: not recorded)."""
    aa = r.get("worst_case_autoattack")
    return r.get("worst_case") if aa is None else aa


def results(study) -> list[dict[str, Any]]:
    """The result of every complete unit, in trial order (one per unit: the first complete)."""
    out, seen = [], set()
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get("result")
        if t.state.name == "COMPLETE" and r and r["unit"] not in seen:
            seen.add(r["unit"])
            out.append(r)
    return out


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return ""
    mean = round(scale * statistics.fmean(values), digits) or 0.0  # never "-0.0"
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def metrics_present(rows: list[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if any(m in r["accuracy"] for r in rows)]


def _hours_label(rows: list[dict[str, Any]]) -> str:
    devices = {r["device"].split(":")[0] for r in rows}
    return ("GPU" if devices == {"cuda"} else "CPU" if devices == {"cpu"} else "device") + \
        " wall h / run"  # the phases' wall time: on a shared machine an upper bound


def source_table(rows: list[dict[str, Any]], order: list[str]) -> pd.DataFrame:
    """One row per source: runs, accuracy mean +- std per metric, parameters, hours per run."""
    metrics, table = metrics_present(rows), []
    for name in order:
        mine = [r for r in rows if r["source"] == name]
        if not mine:
            continue
        row = {"source": name, "kind": mine[0]["kind"], "runs": len(mine)}
        for m in metrics:
            row[f"{METRICS[m]} %"] = _mean_std([r["accuracy"][m] for r in mine if m in r["accuracy"]])
        row[WORST] = _mean_std([w for w in map(worst_case, mine) if w is not None])
        row["params (M)"] = _mean_std([r["params"] for r in mine], scale=1e-6, digits=3)
        row[_hours_label(rows)] = _mean_std([sum(r["seconds"].values()) for r in mine],
                                            scale=1 / 3600, digits=3)
        table.append(row)
    return pd.DataFrame(table)


def versus_random(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Searched minus best random (percentage points), mean +- std over seeds, per metric, and the
    share of random cells each searched run beats."""
    randoms = [r for r in rows if r["kind"] == "random"]
    if not randoms:
        return pd.DataFrame()
    table = []
    for name in dict.fromkeys(r["source"] for r in rows if r["kind"] in SEARCHING):
        mine = [r for r in rows if r["source"] == name]
        row = {"source": name, "runs": len(mine), "random cells": len(randoms)}
        for m in [m for m in metrics_present(rows) if all(m in r["accuracy"] for r in randoms)]:
            best = max(r["accuracy"][m] for r in randoms)
            row[f"Δ {METRICS[m]} (pp)"] = _mean_std([r["accuracy"][m] - best for r in mine])
            beaten = [sum(r["accuracy"][m] > q["accuracy"][m] for q in randoms) / len(randoms)
                      for r in mine]
            row[f"beats % of random ({METRICS[m]})"] = _mean_std(beaten, digits=0)
        table.append(row)
    return pd.DataFrame(table)


def diagnostics_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per searched run: how far alpha moved, weight on parameter-free ops, kept parameter-free
    edges per cell type, mean gamma*."""
    table = []
    for r in rows:
        d = r.get("search") or {}
        if not d:
            continue
        kinds = list(d["alpha_shift"])
        table.append({
            "unit": r["unit"],
            "max abs Δα": " / ".join(f"{d['alpha_shift'][t]:.3g}" for t in kinds),
            "softmax on param-free ops": " / ".join(f"{d['free_weight'][t]:.3f}" for t in kinds)
            + f" (uniform {d['uniform_free_weight']:.3f})",
            "param-free kept edges": " / ".join(str((d.get("param_free") or {}).get(t, ""))
                                                for t in kinds),
            "γ* mean": "" if d.get("gamma_mean") is None else f"{d['gamma_mean']:.3f}",
            "α entropy (nats)": " / ".join(f"{(d.get('alpha_entropy') or {}).get(t, float('nan')):.3f}"
                                           for t in kinds),
            "cell types": " / ".join(kinds),
        })
    return pd.DataFrame(table)


def units_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    metrics = metrics_present(rows)
    table = []
    for r in rows:
        row = {"unit": r["unit"], **{f"{METRICS[m]} %": round(100 * r["accuracy"][m], 2)
                                     for m in metrics if m in r["accuracy"]}}
        if r.get("autoattack_subset_clean") is not None:  # AutoAttack's own clean baseline
            row["clean % (AutoAttack subset)"] = round(100 * r["autoattack_subset_clean"], 2)
        if worst_case(r) is not None:
            row[WORST] = round(100 * worst_case(r), 2)
        row |= {"params": r["params"], "wall h": round(sum(r["seconds"].values()) / 3600, 3)}
        table.append(row)
    return pd.DataFrame(table)


BOOTSTRAP_METRICS = {"clean": "clean", "pgd20": "PGD-20", "worst": "worst case (test subset)"}


def judgement(exp, rows: list[dict[str, Any]], planned: int) -> dict[str, Any]:
    """The run's self-judgement: each criterion of the definition, the verdict, and the paired
    bootstrap of every searching source against the random cells (judge.py)."""
    std = float(exp.search.get("alpha_init_std", 1e-3))
    checks = check_runs(rows, exp.criteria, std, planned)
    searching = [n for n, s in exp.sources.items() if s.searches]
    return {"checks": checks, "verdict": verdict(checks),
            "comparisons": compare_sources(rows, searching, list(BOOTSTRAP_METRICS),
                                           exp.criteria)}


def judgement_markdown(j: dict[str, Any]) -> list[str]:
    lines = ["\n## Can this run answer its question?\n", f"**Verdict: {j['verdict']}.**\n",
             "| criterion | held | what the results show |", "|---|---|---|"]
    held = {True: "yes", False: "**no**"}
    lines += [f"| {_cell(c.criterion)} | {held[c.held] if c.binding or c.held else 'no (these rows only)'}"
              f" | {_cell(c.detail)} |" for c in j["checks"]]
    if j["comparisons"]:
        first = j["comparisons"][0]
        lines += ["", "\n## Searched minus random: paired bootstrap 95% intervals\n",
                  f"Percentage points; {first['resamples']} resamples of the {first['images']} "
                  "test images (paired: the same draw for every unit), the searched runs and the "
                  "random cells. An interval that contains 0 reads \"no detectable difference at "
                  "this size\". The best-random interval is indicative (a max under the "
                  "bootstrap is biased).\n",
                  "| source | metric | runs | random cells | − mean random | 95% interval | "
                  "reading | − best random | 95% interval | reading |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in j["comparisons"]:
            cells = []
            for key in ("vs_mean", "vs_best"):
                v = c[key]
                cells += [f"{100 * v['estimate']:+.1f}",
                          f"[{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]", v["reading"]]
            lines.append(f"| {c['source']} | {BOOTSTRAP_METRICS[c['metric']]} | "
                         f"{c['searched_runs']} | {c['random_cells']} | " + " | ".join(cells) + " |")
    return lines


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a '|' would split it)."""
    return text.replace("|", "\\|")


def report_markdown(name: str, exp, rows: list[dict[str, Any]], states: dict[str, str]) -> str:
    done = sum(s == "COMPLETE" for s in states.values())
    ev = exp.evaluation
    head = (f"# Experiment {name}\n\n{exp.description}\n\nUnits: {done} of {len(states)} "
            f"complete. Test subset: {rows[0]['n_test'] if rows else ev.n_test} images "
            f"(seeded, class-stratified; AutoAttack on {ev.autoattack_n}), eps {ev.eps}. "
            "Accuracies in %, mean ± std over runs. Worst case: per image, correct under every "
            "attack" + (" and AutoAttack, on the AutoAttack subset" if ev.autoattack_n else "")
            + ".\n")
    parts = [head, *judgement_markdown(judgement(exp, rows, len(states))),
             "\n## By source\n", markdown(source_table(rows, list(exp.sources)))]
    vs = versus_random(rows)
    if not vs.empty:
        parts += ["\n## Searched minus best random (percentage points)\n", markdown(vs)]
    diag = diagnostics_table(rows)
    if not diag.empty:
        parts += ["\n## Search diagnostics\n", markdown(diag)]
    parts += ["\n## Units\n", markdown(units_table(rows))]
    return "\n".join(parts) + "\n"
