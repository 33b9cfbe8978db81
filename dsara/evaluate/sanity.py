"""The sanity checks of Carlini et al., "On Evaluating Adversarial Robustness" (2019),
that catch a broken evaluation: eps = 0 gives clean accuracy, accuracy does not rise with eps or
steps, a large eps drives it to about zero, multi-step PGD is not weaker than FGSM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..attacks.gradient import pgd
from ..attacks.registry import _clean, _fgsm
from ..utils.device import fp32_math
from .run import _correct_under, prepare_for_eval


@dataclass
class SanityResult:
    name: str
    passed: bool
    detail: str
    # the check's accuracies as a curve, for pictures: {"eps" or "steps": [...], "accuracy":
    # [...], "attack": "..."}; None for single-number checks
    curve: dict[str, Any] | None = None


def _accuracy(model, x, y, attack: Callable, batch_size: int, seed: int) -> float:
    gen = torch.Generator(x.device).manual_seed(seed)
    hits = [_correct_under(model, attack, x[i:i + batch_size], y[i:i + batch_size], None, gen)
            for i in range(0, len(x), batch_size)]
    return torch.cat(hits).float().mean().item()


def _pgd_at(eps: float, steps: int, step_size: float):
    return lambda m, x, y, _eps, gen: pgd(m, x, y, eps, step_size, steps, generator=gen)


def _largest_rise(seq: Sequence[float]) -> float:
    return max((b - a for a, b in zip(seq[:-1], seq[1:], strict=True)), default=0.0)


def _pct(values) -> str:
    return ", ".join(f"{100 * v:.1f}%" for v in values)


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  batch_size: int = 256, seed: int = 0, large_eps: float = 1.0,
                  near_zero: float = 0.05) -> list[SanityResult]:
    """Run the evaluation sanity checks on images `x` (in [0, 1]) and labels `y`.

    Random starts make accuracies noisy by a sample or two, so "does not rise" allows a rise of
    max(1 point, 2 samples). "About zero" means at most `near_zero` at eps = `large_eps` (1.0 lets
    the attacker reach any image).
    """
    model = prepare_for_eval(model)
    with fp32_math():
        return _sanity(model, x, y, eps, batch_size, seed, large_eps, near_zero)


def _sanity(model, x, y, eps, batch_size, seed, large_eps, near_zero) -> list[SanityResult]:
    tol = max(0.01, 2 / len(x))
    acc = partial(_accuracy, model, x, y, batch_size=batch_size, seed=seed)
    clean = acc(_clean)
    # a non-zero step at eps 0: only the projection keeps x_adv = x, and this check tests it
    probe = eps / 4 or 2 / 255
    at_zero = acc(_pgd_at(0.0, 20, probe))
    eps_grid = [0.0, eps / 4, eps / 2, eps, 2 * eps]
    by_eps = [acc(_pgd_at(e, 20, e / 4 or probe)) for e in eps_grid]
    step_grid = [1, 5, 20]
    by_steps = [acc(_pgd_at(eps, s, max(eps / 4, 2.5 * eps / s))) for s in step_grid]
    large = acc(_pgd_at(large_eps, 20, large_eps / 8))
    fgsm_acc = acc(lambda m, x_, y_, _eps, gen: _fgsm(m, x_, y_, eps, gen))
    pgd_acc = by_eps[3]
    return [
        SanityResult("eps=0 gives clean accuracy", at_zero == clean,
                     f"clean {100 * clean:.2f}%, PGD-20 (step eps/4) at eps 0 "
                     f"{100 * at_zero:.2f}%"),
        SanityResult("accuracy does not rise with eps", _largest_rise(by_eps) <= tol,
                     f"PGD-20 at eps x(0, 1/4, 1/2, 1, 2): {_pct(by_eps)}",
                     {"eps": eps_grid, "accuracy": by_eps, "attack": "PGD-20, step eps/4",
                      "clean": clean}),
        SanityResult("accuracy does not rise with steps", _largest_rise(by_steps) <= tol,
                     f"PGD at 1, 5, 20 steps: {_pct(by_steps)}",
                     {"steps": step_grid, "accuracy": by_steps, "eps": eps,
                      "attack": "PGD, step max(eps/4, 2.5 eps/steps)", "clean": clean}),
        SanityResult("large eps drives accuracy to about zero", large <= near_zero,
                     f"PGD-20 at eps {large_eps:g}: {100 * large:.2f}% "
                     f"(pass: <= {100 * near_zero:.0f}%)"),
        SanityResult("multi-step PGD is not weaker than FGSM", pgd_acc <= fgsm_acc + tol,
                     f"FGSM {100 * fgsm_acc:.2f}%, PGD-20 {100 * pgd_acc:.2f}%"),
    ]


def sanity_table(results: Sequence[SanityResult]) -> str:
    return "\n".join(f"{'PASS' if r.passed else 'FAIL'}  {r.name:<42} {r.detail}"
                     for r in results)
