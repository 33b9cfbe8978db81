"""Equal-parameter comparisons: the size of a network that is closest to a parameter budget.

Papers compare architectures at equal parameter counts, so must we. For a cell network the knob is
the initial channel count C (every stage width is a multiple of C); for a baseline it is the width
of its first stage (the other stages keep their ratios, `dsara.arch.baselines.build_baseline`). The
parameter count grows with the knob, so a doubling search followed by bisection finds the smallest
knob whose count reaches the budget; that knob or the one below it, whichever count is nearer the
budget, is the answer. Counts exclude the auxiliary head, as the papers count. Networks are built on
PyTorch's ``meta`` device: no memory is allocated and a 20-cell network costs milliseconds.

    parse_params("1.2M") -> 1_200_000
    fit_budget("ARNAS", 1_200_000, cells=20)  -> Fit(knob="channels", value=..., params=...)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DsaraError

MAX_KNOB = 1 << 14  # channels; a budget needing more is a typo, not a network
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_params(value: str | int | float) -> int:
    """A parameter budget: 1200000, "1.2M", "800k", "1.2e6" -> a positive integer."""
    if isinstance(value, bool):
        raise DsaraError(f"parameter budget {value!r} is not a number; e.g. 1.2M or 800k")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgb]?)\s*", str(value).lower())
        if m is None:
            raise DsaraError(f"parameter budget {value!r} is not a number; write e.g. 1.2M, "
                             "800k or 1200000")
        number = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not number >= 1:
        raise DsaraError(f"parameter budget {value!r} must be at least 1 parameter")
    return int(round(number))


@dataclass(frozen=True)
class Fit:
    knob: str  # "channels" (cell networks: C) or "width" (baselines: first-stage channels)
    value: int
    params: int  # parameters at `value` (auxiliary head excluded)
    budget: int

    def describe(self) -> str:
        off = 100 * (self.params - self.budget) / self.budget
        return (f"{self.knob} = {self.value}: {self.params / 1e6:.3f} M parameters "
                f"(budget {self.budget / 1e6:.3f} M, {off:+.1f}%)")


def counter(arch: str, *, cells: int | None = None, num_classes: int = 10
            ) -> tuple[str, Callable[[int], int]]:
    """(knob name, knob -> parameter count) for a baseline name, architecture file or cell."""
    from .baselines import baseline_name, build_baseline
    from .profile import count_parameters

    if baseline_name(arch) is not None and not Path(arch).is_file():
        if cells is not None:
            raise DsaraError(f"{arch} is a baseline with a fixed depth; cells apply to cell "
                             "networks only")

        def baseline(width: int) -> int:
            with torch.device("meta"):
                return count_parameters(build_baseline(arch, num_classes, width=width))
        return "width", baseline

    from .archfile import resolve_architecture
    from .build import build_model

    resolved = resolve_architecture(arch).resized(cells=cells)

    def cell_network(C: int) -> int:
        with torch.device("meta"):
            return count_parameters(build_model(resolved, channels=C, num_classes=num_classes))
    return "channels", cell_network


def fit_budget(arch: str, budget: int, *, cells: int | None = None,
               num_classes: int = 10) -> Fit:
    """The knob (C or baseline width) whose parameter count is closest to `budget`.

    Some knobs build no network (a reduction needs even channels, so C = 9 fails where a stage is
    1.5 C wide); those are skipped: "one step" is from one buildable knob to the next."""
    knob, raw = counter(arch, cells=cells, num_classes=num_classes)
    count = functools.cache(lambda k: _count_or_none(raw, k))
    hi = 1
    while (up := step_up(count, hi)) is None or count(up) < budget:  # doubling
        if hi >= MAX_KNOB:
            raise DsaraError(f"{arch} needs more than {MAX_KNOB} {knob} to reach "
                             f"{budget / 1e6:.3f} M parameters; is the budget a typo?")
        hi *= 2
    lo = max(1, hi // 2)
    while lo < hi:  # smallest knob whose next buildable knob reaches the budget
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(step_up(count, mid) or hi) < budget else (lo, mid)
    above = step_up(count, hi)
    candidates = [k for k in (step_down(count, above - 1), above) if k is not None]
    best = min(candidates, key=lambda k: (abs(count(k) - budget), k))
    return Fit(knob, best, count(best), budget)


def _count_or_none(count: Callable[[int], int], k: int) -> int | None:
    try:
        return count(k)
    except DsaraError:  # not buildable at this knob (odd channels into a reduction)
        return None


def step_up(count: Callable[[int], int | None], k: int, reach: int = 8) -> int | None:
    """The smallest buildable knob >= k (looking `reach` knobs ahead), else None."""
    return next((j for j in range(k, k + reach) if count(j) is not None), None)


def step_down(count: Callable[[int], int | None], k: int, reach: int = 8) -> int | None:
    """The largest buildable knob <= k (and >= 1), else None."""
    return next((j for j in range(k, max(0, k - reach), -1) if count(j) is not None), None)
