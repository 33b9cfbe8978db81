"""AutoAttack (Croce & Hein, 2020) through the authors' library (``pip install
pyautoattack``): the evaluation reviewers accept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DsaraError

INSTALL_AUTOATTACK = 'pip install pyautoattack (or pip install "dsara[autoattack]")'


def _import_autoattack():
    """(AutoAttack class, True if it is the `pyautoattack` package API)."""
    try:
        from pyautoattack import AutoAttack

        return AutoAttack, True
    except ImportError:
        pass
    try:
        from autoattack import AutoAttack  # the authors' git repository, older API

        return AutoAttack, False
    except ImportError:
        raise DsaraError(f"the autoattack attack needs the AutoAttack library: "
                         f"{INSTALL_AUTOATTACK}") from None


AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "custom")


@dataclass(frozen=True)
class AutoAttackConfig:
    version: str = "standard"  # standard | plus | rand | custom (the authors' versions)
    attacks: tuple[str, ...] = ()  # custom only: e.g. ("apgd-ce", "apgd-t")

    def validate(self) -> None:
        if self.version not in AUTOATTACK_VERSIONS:
            raise DsaraError(f"unknown AutoAttack version {self.version!r}; versions: "
                             f"{', '.join(AUTOATTACK_VERSIONS)}")
        if bool(self.attacks) != (self.version == "custom"):
            raise DsaraError("AutoAttack takes a list of attacks exactly when version = custom")


def _autoattack(model, x, y, eps, gen, config: AutoAttackConfig = AutoAttackConfig()):
    config.validate()
    cls, packaged = _import_autoattack()
    kw = {} if packaged else {"verbose": False}
    if config.attacks:
        kw[("attacks" if packaged else "attacks_to_run")] = list(config.attacks)
    adversary = cls(model, norm="Linf", eps=eps, version=config.version, device=x.device, seed=0,
                    **kw)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    # standard AutoAttack targets the 9 runner-up classes (all of them on CIFAR-10); with fewer
    # classes it targets all there are instead of failing
    for attack in (adversary.apgd_targeted, adversary.fab):
        attack.n_target_classes = min(attack.n_target_classes, num_classes - 1)
    if packaged:
        return adversary.run_standard_evaluation(x, y, batch_size=len(x))[0]
    return adversary.run_standard_evaluation(x, y, bs=len(x))
