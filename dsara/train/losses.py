"""Adversarial training objectives: PGD-AT, TRADES, MART and FGSM with random start.

Each method is ``method(model, x, y, params, generator=None) -> (loss, terms)``: it crafts the
adversarial batch, runs the model and returns the scalar loss to minimize plus a dict of its terms
(detached scalar tensors, for logging without a host sync per step). The objectives themselves are pure functions of logits
(`trades_objective`, `mart_objective`) so that tests can check them against hand computations.

Attack generation follows each method's reference code: PGD-AT (Madry et al., 2018) and FGSM-RS
(Wong et al., 2020) craft the attack with the model in train mode; TRADES (Zhang et al., 2019) and MART
(Wang et al., 2020) in eval mode, then switch back to train mode for the update. Inner PGD starts
uniformly in the eps-ball (TRADES and MART start at x + 0.001 N(0, 1); both only break the symmetry
at x, where the KL gradient is zero). An auxiliary head, if present, adds
``aux_weight * CE(aux(x_adv), y)`` to every objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import fgsm, pgd
from ..errors import DsaraError

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AdvParams:
    eps: float  # L-inf radius in pixel units ([0, 1] images), e.g. 8/255
    step_size: float  # inner step in pixel units (FGSM-RS: 1.25 * eps)
    steps: int  # inner PGD steps (FGSM-RS: 1)
    beta: float = 6.0  # TRADES / MART weight of the robustness regularizer
    aux_weight: float = 0.0  # weight of the auxiliary head's CE (0 = unused)
    options: Any = None  # the method's typed constants (dsara.train.methods.OPTIONS), if any


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) for each row, computed from log-probabilities."""
    logp, logq = F.log_softmax(logits_p.float(), 1), F.log_softmax(logits_q.float(), 1)
    return (logp.exp() * (logp - logq)).sum(1)


def trades_objective(logits_clean, logits_adv, y, beta: float) -> tuple[torch.Tensor, Terms]:
    """CE(f(x), y) + beta * mean KL(p(x) || p(x_adv)) — Zhang et al. (2019), eq. 5."""
    natural = F.cross_entropy(logits_clean.float(), y)
    kl = kl_per_sample(logits_clean, logits_adv).mean()
    return natural + beta * kl, {"ce_clean": natural.detach(), "kl": kl.detach()}


def mart_objective(logits_clean, logits_adv, y, beta: float) -> tuple[torch.Tensor, Terms]:
    """MART (Wang et al., 2020): boosted CE on x_adv + beta * mean[KL(p(x) || p(x_adv)) (1 - p_y(x))].

    BCE = CE(p_adv, y) - log(1 - max_{k != y} p_adv,k); the constants (1.0001, 1e-12, 1.0000001)
    are those of the authors' code.
    """
    p_adv = F.softmax(logits_adv.float(), 1)
    top2 = p_adv.argsort(1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    margin = F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), runner_up)
    bce = F.cross_entropy(logits_adv.float(), y) + margin
    p_clean = F.softmax(logits_clean.float(), 1)
    true_prob = p_clean.gather(1, y[:, None]).squeeze(1)
    kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
    robust = (kl * (1.0000001 - true_prob)).mean()
    return bce + beta * robust, {"bce": bce.detach(), "margin": margin.detach(),
                                 "weighted_kl": robust.detach()}


def _with_aux(loss, terms, aux, y, weight):
    if aux is not None and weight > 0:
        aux_ce = F.cross_entropy(aux.float(), y)
        loss, terms = loss + weight * aux_ce, {**terms, "aux_ce": aux_ce.detach()}
    return loss, terms


def _craft_in_eval(model: nn.Module, fn, *args, **kw) -> torch.Tensor:
    model.eval()
    try:
        return fn(model, *args, **kw)
    finally:
        model.train()


def pgd_at(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """Madry et al. (2018): CE on PGD examples."""
    x_adv = pgd(model, x, y, p.eps, p.step_size, p.steps, generator=generator)
    logits, aux = model(x_adv, return_aux=True)
    ce = F.cross_entropy(logits.float(), y)
    return _with_aux(ce, {"ce_adv": ce.detach()}, aux, y, p.aux_weight)


def fgsm_rs(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """Wong et al. (2020) "fast is better than free": one signed step from a uniform random start."""
    x_adv = fgsm(model, x, y, p.eps, step_size=p.step_size, generator=generator)
    logits, aux = model(x_adv, return_aux=True)
    ce = F.cross_entropy(logits.float(), y)
    return _with_aux(ce, {"ce_adv": ce.detach()}, aux, y, p.aux_weight)


def trades(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """TRADES: x_adv maximizes KL(p(x) || p(x_adv)); the KL term is taken on x_adv (not on x, which
    would make it zero, as in some public NAS retraining code)."""
    with torch.no_grad():
        model.eval()
        target = model(x).float()
        model.train()
    x_adv = _craft_in_eval(model, pgd, x, y, p.eps, p.step_size, p.steps,
                           loss_fn=lambda logits, _y: kl_per_sample(target, logits).sum(),
                           generator=generator)
    logits_clean = model(x)
    logits_adv, aux = model(x_adv, return_aux=True)
    loss, terms = trades_objective(logits_clean, logits_adv, y, p.beta)
    return _with_aux(loss, terms, aux, y, p.aux_weight)


def mart(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """MART: CE-PGD examples, misclassification-aware boosted loss."""
    x_adv = _craft_in_eval(model, pgd, x, y, p.eps, p.step_size, p.steps, generator=generator)
    logits_clean = model(x)
    logits_adv, aux = model(x_adv, return_aux=True)
    loss, terms = mart_objective(logits_clean, logits_adv, y, p.beta)
    return _with_aux(loss, terms, aux, y, p.aux_weight)


Method = Callable[..., tuple[torch.Tensor, Terms]]

# name -> (objective, default inner step as a multiple of eps, default inner steps)
METHODS: dict[str, tuple[Method, float, int]] = {
    "pgd-at": (pgd_at, 0.25, 10),  # 10 steps of 2/255 at 8/255 (Madry et al.; Rice et al.)
    "trades": (trades, 0.25, 10),  # TRADES' CIFAR recipe: 10 steps of ~2/255 at 8/255
    "mart": (mart, 0.25, 10),  # MART's CIFAR recipe: 10 steps of 2/255 at 8/255
    "fgsm-rs": (fgsm_rs, 1.25, 1),  # Wong et al.: one step of 1.25 eps from a random start
}

# The seed papers' methods (dsara/train/methods/; their constants: methods.OPTIONS). Imported
# here, after the helpers they build on, so that the registry is complete wherever it is read.
from .methods import bang, iat, jsigr, ladder, so_at  # noqa: E402

METHODS |= {
    "iat": (iat.iat, 0.25, 10),  # Lamb et al.: PGD-10 of 2/255 at 8/255 (reimplementation)
    "iat-manifold": (iat.iat_manifold, 0.25, 10),
    "mart-ss": (mart, 0.25, 10),  # MART on labeled + pseudo-labelled batches (methods.mart_ss)
    "bang": (bang.bang, 0.25, 10),  # no attack unless method_options.adversarial = true
    "jsigr": (jsigr.jsigr, 0.25, 10),  # no attack unless method_options.adversarial = true
    "so-at": (so_at.so_at, 1.0, 1),  # delta = eps sign(d): one step of eps from x [recon]
    "ladder": (ladder.ladder, 0.25, 10),  # no PGD: the generated set replaces it
}


def get_method(name: str) -> tuple[Method, float, int]:
    if name not in METHODS:
        raise DsaraError(f"unknown training method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name]
