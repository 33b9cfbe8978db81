"""Adversarial training objectives: PGD-AT, TRADES, MART and FGSM with random start.

Each method is ``method(model, x, y, params, generator=None) -> (loss, terms)``: it crafts the
adversarial batch, runs the model and returns the scalar loss to minimize plus a dict of its terms
(detached scalar tensors, for logging without a host sync per step). The objectives themselves are pure functions of logits
(`trades_objective`, `mart_objective`) so that tests can check them against hand computations.

Every method crafts its attack through `craft`, which puts the model in the mode `params.craft_mode`
asks for (``train`` or ``eval``) and turns drop-path off while the attack is crafted: with
drop-path on, every PGD step would attack another random sub-network. Defaults per method follow
each method's reference code (`METHODS`): PGD-AT (Madry et al., 2018) and FGSM-RS (Wong et al., 2020)
craft in train mode from a uniform start in the eps-ball; TRADES (Zhang et al., 2019) and MART (Wang
et al., 2020) craft in eval mode from x + 0.001 N(0, 1), as their authors' code does. An auxiliary
head, if present, adds ``aux_weight * CE(aux(input), y)``, the input being x_adv (``aux_input =
"adv"``) or the clean x (``"clean"``, the ARNAS / DARTS-lineage retraining code).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.gradient import pgd
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
    craft_mode: str = "train"  # train | eval: the model's mode while the attack is crafted
    start: str = "uniform"  # uniform (in the eps-ball) | normal (x + start_std N(0,1)) | zero
    start_std: float = 0.001  # std of the normal start, pixel units (TRADES / MART / ARNAS code)
    aux_input: str = "adv"  # adv | clean: the input of the auxiliary-head loss


CRAFT_MODES = ("train", "eval")
STARTS = ("uniform", "normal", "zero")
AUX_INPUTS = ("adv", "clean")


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


def _pick_aux(p: AdvParams, aux_clean, aux_adv):
    return aux_clean if p.aux_input == "clean" else aux_adv


def _clean_aux(model, x, p: AdvParams):
    """Auxiliary logits of a clean train-mode forward, before the attack as in the ARNAS loop;
    None unless the auxiliary loss is on the clean input."""
    if p.aux_input != "clean" or p.aux_weight <= 0:
        return None
    return model(x, return_aux=True)[1]


@contextmanager
def crafting(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """`model` in `mode` ("train" | "eval") with drop-path off; both restored afterwards."""
    if mode not in CRAFT_MODES:
        raise DsaraError(f"unknown craft mode {mode!r}; modes: {', '.join(CRAFT_MODES)}")
    was_training, drop = model.training, getattr(model, "drop_path_prob", None)
    model.train(mode == "train")
    if drop is not None:
        model.drop_path_prob = 0.0
    try:
        yield model
    finally:
        model.train(was_training)
        if drop is not None:
            model.drop_path_prob = drop


def craft(model: nn.Module, x, y, p: AdvParams, loss_fn=None, generator=None) -> torch.Tensor:
    """The L-inf PGD attack of `p` (eps, step, steps, start) in `p.craft_mode`, drop-path off.
    Training methods craft through here so that each of them honours the same settings."""
    if p.start not in STARTS:
        raise DsaraError(f"unknown attack start {p.start!r}; starts: {', '.join(STARTS)}")
    start = None
    if p.start == "normal":
        start = p.start_std * torch.randn(x.shape, generator=generator, device=x.device)
    with crafting(model, p.craft_mode):
        return pgd(model, x, y, p.eps, p.step_size, p.steps, random_start=p.start == "uniform",
                   loss_fn=loss_fn, generator=generator, start=start)


def pgd_at(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """Madry et al. (2018): CE on PGD examples."""
    aux_clean = _clean_aux(model, x, p)
    x_adv = craft(model, x, y, p, generator=generator)
    logits, aux = model(x_adv, return_aux=True)
    ce = F.cross_entropy(logits.float(), y)
    return _with_aux(ce, {"ce_adv": ce.detach()}, _pick_aux(p, aux_clean, aux), y, p.aux_weight)


def fgsm_rs(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """Wong et al. (2020) "fast is better than free": one signed step from a uniform random start."""
    if p.steps != 1:
        raise DsaraError(f"fgsm-rs takes exactly one attack step, got {p.steps}")
    return pgd_at(model, x, y, p, generator=generator)


def trades(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """TRADES: x_adv maximizes KL(p(x) || p(x_adv)); the KL term is taken on x_adv (not on x, which
    would make it zero, as in some public NAS retraining code)."""
    with crafting(model, p.craft_mode), torch.no_grad():
        target = model(x).float()
    x_adv = craft(model, x, y, p, loss_fn=lambda logits, _y: kl_per_sample(target, logits).sum(),
                  generator=generator)
    logits_clean, aux_clean = model(x, return_aux=True)
    logits_adv, aux = model(x_adv, return_aux=True)
    loss, terms = trades_objective(logits_clean, logits_adv, y, p.beta)
    return _with_aux(loss, terms, _pick_aux(p, aux_clean, aux), y, p.aux_weight)


def mart(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """MART: CE-PGD examples, misclassification-aware boosted loss."""
    x_adv = craft(model, x, y, p, generator=generator)
    logits_clean, aux_clean = model(x, return_aux=True)
    logits_adv, aux = model(x_adv, return_aux=True)
    loss, terms = mart_objective(logits_clean, logits_adv, y, p.beta)
    return _with_aux(loss, terms, _pick_aux(p, aux_clean, aux), y, p.aux_weight)

