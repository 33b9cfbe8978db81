"""BANG — Batch Adjusted Network Gradients (Rozsa, Günther, Boult, arXiv 1612.00138).

**[recon]** The authors' Caffe fork adjusts gradients inside conv and fully connected layers with
per-layer parameters *beta*, *epsilon* and *ratio*; beta = 0 is plain training; no adversarial
examples, no augmentation beyond the usual. Their exact formula was not readable, so this is our
reconstruction (SEEDS.md): within a batch, each correctly classified sample's loss gradient is
scaled so that well-classified samples (small gradients) keep contributing to the weight update,

    s_i = min(ratio, ((max_j ||g_j|| + epsilon) / (||g_i|| + epsilon)) ** beta)   if correct,
    s_i = 1                                                                         otherwise,

where g_i = softmax(f(x_i)) - onehot(y_i) is the gradient of sample i's cross-entropy with respect
to its logits. Scaling that gradient scales sample i's back-propagated signal in every layer alike,
so it is applied as a detached weight on the per-sample loss: loss = mean_i s_i CE_i. One scale
for all layers (the authors allow one per layer). Constants in `BANGOptions`; with
``adversarial = true`` the same weighting applies to PGD examples (BANG on top of PGD-AT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import DsaraError
from ..losses import AdvParams, Terms, _clean_aux, _pick_aux, _with_aux, craft
from .base import Method


@dataclass(frozen=True)
class BANGOptions:
    beta: float = 1.0  # exponent of the gradient-norm ratio; 0 = plain training [recon]
    epsilon: float = 0.01  # added to the logit-gradient norms (which lie in [0, sqrt 2]) [recon]
    ratio: float = 10.0  # cap on a sample's scale s_i [recon]
    adversarial: bool = False  # true: the weighted CE is on PGD examples (BANG + PGD-AT)

    def validate(self) -> None:
        if self.beta < 0 or not self.epsilon > 0 or self.ratio < 1:
            raise DsaraError(f"bang: need beta >= 0, epsilon > 0 and ratio >= 1; got beta="
                             f"{self.beta}, epsilon={self.epsilon}, ratio={self.ratio}")


def bang_scales(logits: torch.Tensor, y: torch.Tensor, o: BANGOptions) -> torch.Tensor:
    """The per-sample scales s_i (B,), detached (see the module docstring)."""
    with torch.no_grad():
        logits = logits.float()
        g = F.softmax(logits, 1) - F.one_hot(y, logits.shape[1]).float()  # dCE_i / dlogits_i
        norm = g.norm(dim=1)
        s = ((norm.max() + o.epsilon) / (norm + o.epsilon)) ** o.beta
        correct = logits.argmax(1) == y
        return torch.where(correct, s.clamp(max=o.ratio), torch.ones_like(s))


def bang_ce(logits: torch.Tensor, y: torch.Tensor, o: BANGOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_i s_i CE_i, the scales)."""
    s = bang_scales(logits, y, o)
    return (s * F.cross_entropy(logits.float(), y, reduction="none")).mean(), s


def bang(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """BANG [recon]: batch-adjusted per-sample gradient scales on CE (of x, or of PGD examples)."""
    o = p.options or BANGOptions()
    aux_clean = _clean_aux(model, x, p) if o.adversarial else None
    if o.adversarial:
        x = craft(model, x, y, p, generator=generator)
    logits, aux = model(x, return_aux=True)
    loss, s = bang_ce(logits, y, o)
    terms = {"bang_ce": loss.detach(), "mean_scale": s.mean()}
    aux = _pick_aux(p, aux_clean, aux) if o.adversarial else aux
    return _with_aux(loss, terms, aux, y, p.aux_weight)


RECORDS = (
    Method("bang", bang, 0.25, 10, options=BANGOptions),  # no attack unless options.adversarial
)
