"""Transfer attacks: adversarial examples crafted on surrogate models, scored on the target.

MI-FGSM (Dong et al., CVPR 2018) is the attack J-SIGR is evaluated with; its repository holds the
authors' transfer code [code]: g <- mu * g + grad / mean|grad| (per image), x <- clip_{x +- eps}(x +
(eps / T) * sign(g)), mu = 1, T = 10, the labels being the surrogate ensemble's own prediction and
the ensemble's logits the average of its members'. `transfer-pgd` is PGD-20 of eps/4 with random
start on the same ensemble. With the target itself as the only surrogate both are the white-box
attacks, which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DsaraError
from .base import check_adversarial
from .gradient import pgd
from .krylov import project

LABELS = ("predicted", "true")  # what the attacker moves away from


class Ensemble(nn.Module):
    """Logits averaged over the members (each in eval mode, fp32)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise DsaraError("a transfer attack needs at least one surrogate model "
                             "(--surrogate RUN_DIR[,RUN_DIR...])")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


@dataclass(frozen=True)
class TransferConfig:
    mu: float = 1.0  # MI-FGSM momentum decay (Dong et al.: 1.0)
    iters: int = 10  # MI-FGSM iterations T; step eps / T (Dong et al.: 10)
    pgd_steps: int = 20  # transfer-pgd steps of eps / 4, random start
    labels: str = "predicted"  # predicted: the ensemble's clean prediction (J-SIGR's code); true

    def validate(self) -> TransferConfig:
        if self.labels not in LABELS:
            raise DsaraError(f"unknown transfer label source {self.labels!r}; choose from "
                             f"{', '.join(LABELS)}")
        if self.iters < 1 or self.pgd_steps < 0 or not self.mu >= 0:
            raise DsaraError(f"transfer attacks need iters >= 1, pgd_steps >= 0, mu >= 0; got "
                             f"{self.iters}, {self.pgd_steps}, {self.mu}")
        return self


def mifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mu: float = 1.0,
           iters: int = 10) -> torch.Tensor:
    """Momentum iterative FGSM, L-inf: `iters` steps of eps / iters along the sign of the
    accumulated, per-image L1-normalized gradient of the cross-entropy; clipped to [0, 1]."""
    x32 = x.detach().float()
    x_adv, g = x32.clone(), torch.zeros_like(x32)
    step = eps / iters
    for _ in range(iters):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv).float(), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)  # mean|grad| per image
        g = mu * g + grad / scale.view(-1, *([1] * (grad.dim() - 1)))
        x_adv = project(x32, x_adv.detach() + step * g.sign(), eps)
    return x_adv.to(x.dtype)


def attack_labels(surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: str
                  ) -> torch.Tensor:
    if labels == "true":
        return y
    with torch.no_grad():
        return surrogate(x.float()).argmax(1)


def craft(surrogate: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, eps: float,
          config: TransferConfig = TransferConfig(),
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples of `kind` ("mifgsm" or "pgd") crafted on the surrogate."""
    config.validate()
    target = attack_labels(surrogate, x, y, config.labels)
    if kind == "mifgsm":
        return mifgsm(surrogate, x, target, eps, config.mu, config.iters)
    if kind == "pgd":
        return pgd(surrogate, x, target, eps, eps / 4, config.pgd_steps, generator=generator)
    raise DsaraError(f"unknown transfer attack kind {kind!r}; kinds: mifgsm, pgd")


def transfer_attack(surrogates: Sequence[nn.Module], kind: str,
                    config: TransferConfig = TransferConfig()):
    """An evaluate attack (model, x, y, eps, gen) -> x_adv that ignores the model it is given
    and crafts on the ensemble of `surrogates` instead."""
    ensemble = Ensemble(list(surrogates))
    config.validate()

    def attack(model, x, y, eps, gen):
        ensemble.to(x.device)
        return craft(ensemble, kind, x, y, eps, config, gen)

    return attack


# ----------------------------------------------------------------------------- transfer matrix

def transfer_matrix(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                    eps: float, kind: str = "mifgsm", config: TransferConfig = TransferConfig(),
                    batch_size: int = 256, seed: int = 0) -> dict:
    """Accuracy of every target on examples crafted on every source (each model alone), over
    images (N, C, H, W) in [0, 1]. accuracy[i][j]: crafted on source i, scored on target j;
    the diagonal is the white-box attack. Models must be in eval mode on the images' device."""
    names = list(models)
    acc = [[0.0] * len(names) for _ in names]
    for i, source in enumerate(names):
        gen = torch.Generator(images.device).manual_seed(seed + i)
        hits = [0] * len(names)
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            y = labels[start:start + batch_size]
            x_adv = craft(models[source], kind, x, y, eps, config, gen)
            check_adversarial(x, x_adv, eps, f"transfer-{kind} from {source}")
            with torch.no_grad():
                for j, target in enumerate(names):
                    hits[j] += int((models[target](x_adv).argmax(1) == y).sum())
        acc[i] = [h / len(images) for h in hits]
    with torch.no_grad():
        clean = {name: float(torch.cat([(m(images[s:s + batch_size]).argmax(1)
                                         == labels[s:s + batch_size])
                                        for s in range(0, len(images), batch_size)])
                             .float().mean()) for name, m in models.items()}
    return {"models": names, "attack": f"transfer-{kind}", "eps": eps, "n": len(images),
            "config": {**config.__dict__}, "accuracy": acc, "clean": clean,
            "rows": "source (crafted on)", "columns": "target (scored on)"}
