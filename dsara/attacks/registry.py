"""The attacks `dsara evaluate` knows by name: `ATTACKS`, one `Attack` record per name in a fixed
order, and `parse_attacks`. A record holds the attack's function -- or, for an attack that needs
more than the model (surrogates, a generator, a detector), what it needs, and
`dsara.evaluate.suite` builds it per evaluation -- whether it is a reconstruction, and whether its
library needs standard-layout (NCHW) tensors. Adding an attack is its function plus one record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Attack:
    name: str
    fn: AttackFn | None  # None: built per evaluation (dsara.evaluate.suite) from what it `needs`
    needs: str = ""  # what it needs beyond the model, in words (with the flag that gives it)
    recon: bool = False  # a reconstruction of a seed paper's attack (SEEDS.md)
    nchw_only: bool = False  # its library .view()s tensors: it sees the standard layout


SURROGATES = "surrogate models: --surrogate RUN_DIR[,...]"
_RECORDS = (
    Attack("clean", _clean),
    Attack("fgsm", _fgsm),
    Attack("pgd20", partial(_pgd, steps=20)),
    Attack("pgd100", partial(_pgd, steps=100)),
    Attack("cw", partial(_pgd, steps=30, loss_fn=cw_margin)),
    Attack("autoattack", _autoattack, nchw_only=True),
    Attack("so-krylov", _so_krylov, recon=True),
    Attack("transfer-mifgsm", None, SURROGATES),
    Attack("transfer-pgd", None, SURROGATES),
    Attack("ai-gan", None, "a generator trained against the model (dsara.evaluate.suite.Suite)",
           recon=True),
    Attack("squeeze-adaptive", None, "the squeeze detector: --detect squeeze", recon=True),
)
ATTACKS: dict[str, Attack] = {a.name: a for a in _RECORDS}


def attack_fn(name: str) -> AttackFn:
    """The function of the registered attack `name`; for one the suite builds, a function that
    says what it needs when it is run without it."""
    record = ATTACKS[name]
    if record.fn is not None:
        return record.fn

    def attack(model, x, y, eps, gen):
        raise DsaraError(f"the {name} attack needs {record.needs}")
    return attack


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
