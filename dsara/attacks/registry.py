"""The attacks `dsara evaluate` knows by name (`ATTACKS`, in a fixed order) and
`parse_attacks`; attacks that need more than the model are placeholders that say what they need
(`dsara.evaluate.suite` builds them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DsaraError
from .autoattack import _autoattack, _import_autoattack
from .gradient import fgsm, pgd
from .krylov import KrylovConfig, so_krylov

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, torch.Generator],
                    torch.Tensor]


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin, summed over the batch: max_{j != y} z_j - z_y (ascent target)."""
    z = logits.float()
    correct = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return (other - correct).sum()


def _clean(model, x, y, eps, gen):
    return x


def _fgsm(model, x, y, eps, gen):
    return fgsm(model, x, y, eps, random_start=False)


def _pgd(model, x, y, eps, gen, steps: int, loss_fn=None):
    return pgd(model, x, y, eps, eps / 4, steps, loss_fn=loss_fn, generator=gen)


def _so_krylov(model, x, y, eps, gen, config: KrylovConfig = KrylovConfig()):
    return so_krylov(model, x, y, eps, config, generator=gen)


def _needs(name: str, what: str) -> AttackFn:
    def attack(model, x, y, eps, gen):
        raise DsaraError(f"the {name} attack needs {what}")
    return attack


ATTACKS: dict[str, AttackFn] = {
    "clean": _clean,
    "fgsm": _fgsm,
    "pgd20": partial(_pgd, steps=20),
    "pgd100": partial(_pgd, steps=100),
    "cw": partial(_pgd, steps=30, loss_fn=cw_margin),
    "autoattack": _autoattack,
    "so-krylov": _so_krylov,
    "transfer-mifgsm": _needs("transfer-mifgsm", "surrogate models: --surrogate RUN_DIR[,...]"),
    "transfer-pgd": _needs("transfer-pgd", "surrogate models: --surrogate RUN_DIR[,...]"),
    "ai-gan": _needs("ai-gan", "a generator trained against the model (dsara.evaluate.suite.Suite)"),
    "squeeze-adaptive": _needs("squeeze-adaptive", "the squeeze detector: --detect squeeze"),
}


def parse_attacks(text: str | Sequence[str]) -> list[str]:
    """``"clean,pgd20"`` -> ``["clean", "pgd20"]``; unknown names fail with the known ones."""
    names = [a.strip().lower() for a in (text.split(",") if isinstance(text, str) else text)]
    names = [a for a in dict.fromkeys(names) if a]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise DsaraError(f"unknown attack {(unknown or [''])[0]!r}; attacks: {', '.join(ATTACKS)}")
    if "autoattack" in names:
        _import_autoattack()  # fail before hours of other attacks, not after
    return names
