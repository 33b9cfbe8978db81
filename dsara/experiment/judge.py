"""Can an experiment's run answer its question? Criteria written in the definition, checked on the
results, and paired bootstrap intervals for "searched minus random".

A definition's ``[criteria]`` table (every key optional; the defaults are below)::

    [criteria]
    alpha_moved = 50        # every search: max |alpha - alpha_0| >= 50 x alpha_init_std, every cell type
    min_clean = 0.40        # every retrained network, on the test subset (references: their row)
    min_pgd20 = 0.20
    min_n_test = 2000       # test images of every unit (the same subset for all)
    min_autoattack_n = 500  # AutoAttack images of every unit
    bootstrap = 2000        # resamples of the paired bootstrap
    bootstrap_seed = 0

A run that misses a criterion is *not informative*, and the report names the criterion. A run
that meets them all can still find "no detectable difference at this size": the 95% interval of a
difference contains 0.

The bootstrap is paired over test images (every unit is evaluated on the same test subset, so one
resample of image positions is applied to every unit) and resamples the runs too: the searched
runs (seeds) and the random cells, each with replacement. "Searched minus best random" takes the
best random cell of each resample: the max is a biased statistic under the bootstrap, so read that
interval as indicative.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import DsaraError
from ..utils.config import Fields

NO_DIFFERENCE = "no detectable difference at this size"


@dataclass(frozen=True)
class Criteria:
    alpha_moved: float = 50.0  # x alpha_init_std
    min_clean: float = 0.40
    min_pgd20: float = 0.20
    min_n_test: int = 2000
    min_autoattack_n: int = 500
    bootstrap: int = 2000
    bootstrap_seed: int = 0


def criteria_from_dict(table: Any, where: str) -> Criteria:
    f = Fields(table, where)
    kw = {}
    for fd in fields(Criteria):
        kind = (int, float) if fd.type == "float" else int
        value = f.get(fd.name, kind, getattr(Criteria, fd.name),
                      check=lambda v: v >= 0, hint=f"{fd.name} must be >= 0")
        kw[fd.name] = float(value) if fd.type == "float" else value
    f.finish()
    if kw["bootstrap"] < 100:
        raise DsaraError(f"{where}: bootstrap needs at least 100 resamples, got {kw['bootstrap']}")
    return Criteria(**kw)


# Sources that are references, not part of the compared question "searched vs random cells":
# a published cell or a hand-designed baseline far from chance makes its own row not informative,
# never the comparison.
REFERENCE_KINDS = ("published", "baseline")


@dataclass(frozen=True)
class Check:
    criterion: str  # what was required, in words
    held: bool
    detail: str  # what the results show (the failing units, or the extremes)
    binding: bool = True  # False: about reference rows only; the verdict names them, not the run


def check_runs(rows: list[dict[str, Any]], c: Criteria, alpha_init_std: float,
               planned: int) -> list[Check]:
    """Every criterion on the complete units `rows` (of `planned` units)."""
    checks = [Check(f"all {planned} units complete", len(rows) == planned,
                    f"{len(rows)} of {planned} complete")]
    searched = [r for r in rows if r.get("search")]
    need = c.alpha_moved * alpha_init_std
    low = [f"{r['unit']} {t} {s:.3g}" for r in searched
           for t, s in r["search"]["alpha_shift"].items() if s < need]
    shifts = [s for r in searched for s in r["search"]["alpha_shift"].values()]
    checks.append(Check(f"alpha left its initialisation: max abs Δα >= {c.alpha_moved:g} x "
                        f"{alpha_init_std:g} = {need:.3g} in every cell type of every search",
                        bool(searched) and not low,
                        ("below: " + ", ".join(low)) if low else
                        (f"smallest {min(shifts):.3g}" if shifts else "no search finished")))
    compared = [r for r in rows if r["kind"] not in REFERENCE_KINDS]
    references = [r for r in rows if r["kind"] in REFERENCE_KINDS]
    for metric, floor in (("clean", c.min_clean), ("pgd20", c.min_pgd20)):
        for group, what, binding in ((compared, "every compared network (searched, random)", True),
                                     (references, "every reference network (published, "
                                      "baseline)", False)):
            if not group and not binding:
                continue
            bad = [f"{r['unit']} {100 * r['accuracy'].get(metric, 0):.1f}%" for r in group
                   if r["accuracy"].get(metric, 0) < floor]
            values = [r["accuracy"].get(metric, 0) for r in group]
            checks.append(Check(
                f"{what} far from chance: {metric} >= {100 * floor:.0f}%",
                bool(group) and not bad, ("below: " + ", ".join(bad)) if bad else
                (f"lowest {100 * min(values):.1f}%" if values else "no results"), binding))
    n_tests = sorted({r["n_test"] for r in rows})
    checks.append(Check(f"test subset >= {c.min_n_test} images, the same for every unit",
                        len(n_tests) == 1 and n_tests[0] >= c.min_n_test,
                        f"n_test {', '.join(map(str, n_tests)) or '-'}"))
    aa = sorted({r.get("autoattack_n") or 0 for r in rows})
    checks.append(Check(f"AutoAttack on >= {c.min_autoattack_n} images",
                        bool(aa) and min(aa) >= c.min_autoattack_n,
                        f"autoattack_n {', '.join(map(str, aa)) or '-'}"))
    return checks


def verdict(checks: list[Check]) -> str:
    """"informative" when every binding criterion held, else "not informative" with the missed
    ones; reference rows that missed their floor are named either way (their rows alone are not
    informative)."""
    missed = [ch.criterion for ch in checks if not ch.held and ch.binding]
    refs = [ch.detail.removeprefix("below: ") for ch in checks if not ch.held and not ch.binding]
    note = f"; reference rows not informative ({'; '.join(refs)})" if refs else ""
    if not missed:
        return "informative: every criterion held" + note
    return "not informative: missed " + "; ".join(missed) + note


# ----------------------------------------------------------------------------- the bootstrap

def per_sample(row: dict[str, Any], metric: str) -> np.ndarray | None:
    """A unit's 0/1 vector over the test subset for `metric` (``worst`` = every attack of the
    subset), or None where it was not recorded."""
    bits = row.get("per_sample") or {}
    if metric == "worst":
        vectors = [v for k, v in bits.items() if k != "autoattack"]
        if not vectors:
            return None
        return np.all([_vector(v) for v in vectors], axis=0).astype(np.float64)
    return _vector(bits[metric]).astype(np.float64) if metric in bits else None


def _vector(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")


def paired_bootstrap(searched: np.ndarray, randoms: np.ndarray, n_boot: int, seed: int
                     ) -> dict[str, Any]:
    """95% intervals of mean(searched) - mean(randoms) and mean(searched) - max(randoms).

    `searched` (S, N) and `randoms` (R, N) are 0/1 per test image (the same N images, in the same
    order, for every row). Each resample draws N image positions, S searched rows and R random rows
    with replacement; accuracy is the row mean over the drawn positions."""
    rng = np.random.default_rng(seed)
    s_count, n = searched.shape
    r_count = randoms.shape[0]
    d_mean, d_best = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        images = rng.integers(0, n, n)
        s_acc = searched[rng.integers(0, s_count, s_count)][:, images].mean(1)
        r_acc = randoms[rng.integers(0, r_count, r_count)][:, images].mean(1)
        d_mean[b] = s_acc.mean() - r_acc.mean()
        d_best[b] = s_acc.mean() - r_acc.max()
    s_acc, r_acc = searched.mean(1), randoms.mean(1)
    return {"vs_mean": _interval(s_acc.mean() - r_acc.mean(), d_mean),
            "vs_best": _interval(s_acc.mean() - r_acc.max(), d_best),
            "searched_runs": s_count, "random_cells": r_count, "images": n, "resamples": n_boot}


def _interval(estimate: float, draws: np.ndarray) -> dict[str, Any]:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"estimate": float(estimate), "low": float(lo), "high": float(hi),
            "reading": NO_DIFFERENCE if lo <= 0 <= hi else
            ("searched better" if lo > 0 else "searched worse")}


def compare_sources(rows: list[dict[str, Any]], searching: list[str], metrics: list[str],
                    c: Criteria) -> list[dict[str, Any]]:
    """One record per (searching source, metric): the paired bootstrap against the random cells,
    on the units that recorded per-image results."""
    randoms = [r for r in rows if r["kind"] == "random"]
    out = []
    for name in searching:
        mine = [r for r in rows if r["source"] == name]
        for metric in metrics:
            s = [per_sample(r, metric) for r in mine]
            q = [per_sample(r, metric) for r in randoms]
            if not mine or not randoms or any(v is None for v in s + q):
                continue
            if len({len(v) for v in s + q}) != 1:
                raise DsaraError(f"units of {name} and random were evaluated on test subsets of "
                                 "different sizes; the paired bootstrap needs one subset")
            out.append({"source": name, "metric": metric,
                        **paired_bootstrap(np.stack(s), np.stack(q), c.bootstrap,
                                           c.bootstrap_seed)})
    return out
