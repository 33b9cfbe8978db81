"""J-SIGR: Jacobian norm + selective input-gradient regularization (Liu et al., Pattern
Recognition 2024, arXiv 2207.13036).

The abstract names Jacobian normalization and a selective input-gradient regularization of
perturbation-based saliency maps; the authors' repository holds only a transfer attack. The
objective here is our **[recon]** (SEEDS.md), every constant in `JSIGROptions`:

    CE(f(x'), y) + lambda_j ||J(x')||_F^2 + lambda_g mean_i ||m_i * grad_x CE_i(x')||^2,

with x' = x, or PGD examples when ``adversarial = true``, and

- ||J||_F^2 of the logits w.r.t. the input estimated by random projections (Hoffman et al.
  2019): C E_v ||v^T J||^2, v uniform on the unit sphere of the C logits, `projections` draws;
  v^T J is one input gradient of v . f(x), taken with create_graph so the penalty trains.
- m_i the unimportant pixels of image i by an occlusion (perturbation-based) saliency map: the
  image is cut into `patch` x `patch` squares; a square's saliency is how much the true-class
  log-probability drops when it is replaced by the image mean (no gradient, model in eval mode);
  the `unimportant` fraction of squares with the lowest saliency form the mask. The input-gradient
  penalty (Ross & Doshi-Velez 2018) is restricted to them: the model should not be sensitive where
  the evidence is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import DsaraError
from ..losses import AdvParams, Terms, _clean_aux, _pick_aux, _with_aux, craft
from .base import Method


@dataclass(frozen=True)
class JSIGROptions:
    lambda_j: float = 0.01  # weight of the Jacobian penalty (Hoffman et al.'s 0.01) [recon]
    lambda_g: float = 1.0  # weight of the masked input-gradient penalty [recon]
    projections: int = 1  # random projections per batch for ||J||_F^2 (Hoffman et al.: 1)
    patch: int = 4  # side of an occlusion square in pixels [recon]
    unimportant: float = 0.5  # fraction of squares (lowest saliency) in the mask [recon]
    adversarial: bool = False  # true: all terms on PGD examples instead of clean images

    def validate(self) -> None:
        if min(self.lambda_j, self.lambda_g) < 0 or self.projections < 1 or self.patch < 1 \
                or not 0 <= self.unimportant <= 1:
            raise DsaraError("jsigr: need lambda_j, lambda_g >= 0, projections >= 1, patch >= 1 "
                             f"and unimportant in [0, 1]; got {self}")


def jacobian_norm2(logits: torch.Tensor, x: torch.Tensor, projections: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Estimate of mean_i ||d logits_i / d x_i||_F^2 (x must require grad; differentiable)."""
    b, c = logits.shape
    total = logits.new_zeros(())
    for _ in range(projections):
        v = torch.randn(b, c, generator=generator, device=logits.device)
        v = v / v.norm(dim=1, keepdim=True)
        (vj,) = torch.autograd.grad((logits.float() * v).sum(), x, create_graph=True)
        total = total + c * vj.pow(2).flatten(1).sum(1).mean()
    return total / projections


@torch.no_grad()
def occlusion_mask(model, x: torch.Tensor, y: torch.Tensor, patch: int, fraction: float
                   ) -> torch.Tensor:
    """(B, 1, H, W) mask, 1 on the `fraction` of patch squares whose occlusion changes the
    true-class log-probability least (the unimportant ones). Model in eval mode, no gradient."""
    b, ch, h, w = x.shape
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    was = model.training
    model.eval()
    try:
        base = F.log_softmax(model(x).float(), 1).gather(1, y[:, None])  # (B, 1)
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        drops = []
        for k in range(gh * gw):
            i, j = divmod(k, gw)
            xo = x.clone()
            xo[..., i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = fill
            drops.append((base - F.log_softmax(model(xo).float(), 1).gather(1, y[:, None])).abs())
    finally:
        model.train(was)
    sal = torch.cat(drops, 1)  # (B, squares)
    n = round(fraction * sal.shape[1])
    small = torch.zeros_like(sal)
    if n > 0:
        small.scatter_(1, sal.argsort(1)[:, :n], 1.0)
    grid = small.view(b, 1, gh, gw)
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]


def jsigr(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """J-SIGR [recon]: CE + lambda_j ||J||_F^2 + lambda_g ||mask * grad_x CE||^2."""
    o = p.options or JSIGROptions()
    aux_clean = _clean_aux(model, x, p) if o.adversarial else None
    if o.adversarial:
        x = craft(model, x, y, p, generator=generator)
    mask = occlusion_mask(model, x, y, o.patch, o.unimportant) if o.lambda_g > 0 else None
    x = x.detach().float().requires_grad_(True)
    logits, aux = model(x, return_aux=True)
    ce_i = F.cross_entropy(logits.float(), y, reduction="none")
    ce = ce_i.mean()
    loss, terms = ce, {"ce": ce.detach()}
    if o.lambda_j > 0:
        jac = jacobian_norm2(logits, x, o.projections, generator)
        loss, terms["jacobian"] = loss + o.lambda_j * jac, jac.detach()
    if mask is not None:
        (g,) = torch.autograd.grad(ce_i.sum(), x, create_graph=True)  # per-sample input grads
        grad_pen = (mask * g).pow(2).flatten(1).sum(1).mean()
        loss, terms["masked_grad"] = loss + o.lambda_g * grad_pen, grad_pen.detach()
    aux = _pick_aux(p, aux_clean, aux) if o.adversarial else aux
    return _with_aux(loss, terms, aux, y, p.aux_weight)


RECORDS = (
    # no attack unless method_options.adversarial = true
    Method("jsigr", jsigr, 0.25, 10, "eval", options=JSIGROptions),
)
