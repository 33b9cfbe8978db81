"""The pieces of one DSARA search step: adversarial examples, the weight step, the arch gradient.

All statistics are returned as device tensors; nothing here calls `.item()`, so a step never waits
for the GPU. In a data-parallel search (`Dist`) each rank holds its slice of the global batch and
every gradient is averaged over the ranks before it is used; with one process `Dist()` does nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

from ..arch.supernet import Supernet
from ..attacks.gradient import pgd
from ..utils.device import fp32_math
from .config import SearchConfig
from .distributed import Dist
from .mgda import combine
from .weight_method import method_loss

Ctx = Callable[[], AbstractContextManager]
ONE = Dist()  # a single process


def adversarial(model: Supernet, x, y, cfg: SearchConfig, amp: Ctx, dist: Dist = ONE
                ) -> torch.Tensor:
    """PGD examples of a batch at the current weights and alpha (inner maximization)."""
    start = None
    if dist.enabled and cfg.eps > 0 and cfg.pgd_steps > 0:
        # the random start of the global batch (the draw a single process makes), then our slice
        noise = torch.rand((dist.world_size * x.shape[0], *x.shape[1:]), device=x.device)
        start = (2 * noise.tensor_split(dist.world_size)[dist.rank] - 1) * cfg.eps
    with amp():
        return pgd(model, x, y, cfg.eps, cfg.step_size, cfg.pgd_steps, random_start=True,
                   start=start)


def ce(model: Supernet, x, y, amp: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 cross-entropy, number of correct predictions) of the supernet on a batch."""
    with amp():
        logits = model(x)
    return F.cross_entropy(logits.float(), y), (logits.argmax(1) == y).sum()


def weight_step(model: Supernet, x_adv, y, opt: torch.optim.Optimizer, cfg: SearchConfig,
                amp: Ctx, weights: list[torch.nn.Parameter], dist: Dist = ONE, x=None
                ) -> dict[str, torch.Tensor]:
    """SGD on the cross-entropy of PGD examples: the supernet is adversarially trained. Another
    cfg.weight_method trains on its own loss of the clean batch `x` (weight_method.py)."""
    opt.zero_grad(set_to_none=True)
    if cfg.weight_method != "pgd-at":
        loss = method_loss(model, x, y, cfg, amp)
        loss.backward(inputs=weights)
        dist.mean_grads_(weights)
        torch.nn.utils.clip_grad_norm_(weights, cfg.grad_clip, foreach=True)
        opt.step()
        return {"train_loss_adv": loss.detach()}  # no PGD accuracy: no PGD batch was made
    loss, correct = ce(model, x_adv, y, amp)
    loss.backward(inputs=weights)  # alpha gets no gradient from the weight step
    dist.mean_grads_(weights)  # one coalesced all-reduce (no overlap with backward: kept simple)
    torch.nn.utils.clip_grad_norm_(weights, cfg.grad_clip, foreach=True)
    opt.step()
    return {"train_loss_adv": loss.detach(), "train_correct_adv": correct}


def arch_step(model: Supernet, x_v, y_v, x_v_adv, stage: int, cfg: SearchConfig, amp: Ctx,
              opt: torch.optim.Optimizer, unrolled: Callable | None = None, dist: Dist = ONE
              ) -> dict[str, torch.Tensor]:
    """One Adam step of alpha on the stage's objective; stage 2 combines g_nat and lam*g_adv.

    Each graph is freed before the next forward (peak memory: one graph, not two); the clean
    forward of stage 1 only feeds the statistics, so it runs without a graph.
    """
    alphas = model.arch_parameters()
    scale = cfg.lam if stage == 2 else 1.0
    first_order = unrolled is None
    with _graph_if(stage == 2 and first_order):
        loss_nat, correct_nat = ce(model, x_v, y_v, amp)
    if stage == 2 and first_order:
        g_nat = dist.mean(list(torch.autograd.grad(loss_nat, alphas)))
    with _graph_if(first_order):
        loss_adv, correct_adv = ce(model, x_v_adv, y_v, amp)
    stats = {"val_loss_nat": loss_nat.detach(), "val_loss_adv": loss_adv.detach(),
             "val_correct_nat": correct_nat, "val_correct_adv": correct_adv}
    if first_order:
        g_adv = dist.mean(list(torch.autograd.grad(scale * loss_adv, alphas)))
    else:  # the second-order update evaluates the losses again at the virtual weights, in fp32
        g_adv = dist.mean(unrolled(lambda ctx: scale * ce(model, x_v_adv, y_v, ctx)[0]))
        g_nat = (dist.mean(unrolled(lambda ctx: ce(model, x_v, y_v, ctx)[0])) if stage == 2
                 else None)
    if stage == 2:  # gamma* from the rank-averaged g_nat and g_adv: the same on every rank
        direction, gamma = combine(g_nat, g_adv, cfg.combine)
        stats["gamma"] = gamma.detach()
    else:
        direction = g_adv
    opt.zero_grad(set_to_none=True)
    for a, g in zip(alphas, direction):
        a.grad = g.to(a.dtype)
    opt.step()
    return stats


def make_unrolled(model: Supernet, x_t_adv, y_t, w_opt: torch.optim.SGD, cfg: SearchConfig,
                  dist: Dist = ONE
                  ) -> Callable[[Callable[[Ctx], torch.Tensor]], list[torch.Tensor]]:
    """Second-order (DARTS) alpha gradient of a validation loss L_val:

        grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2R

    with w' = w - xi * (SGD step on L_train), w+- = w +- R * grad_w' L_val, R = 0.01 / ||grad_w'||.
    L_train is the CE of the train batch's PGD examples, held fixed. The returned function takes
    L_val as a function of the autocast context to compute it in.

    Every pass here runs in true fp32, whatever the search's precision: autocast off and TF32 off
    (`device.fp32_math`; cuDNN convolutions on Ampere/Hopper default to TF32, whose 10-bit mantissa
    is as coarse as bf16's problem below), and R in the weights' own dtype. Under bf16 the shifts R*d
    (about 1e-5 per weight) are below bf16's spacing (~5e-4 at |w| = 0.1), so w+ and w- round
    to nearly the same weights; and the estimate is so sensitive to its inputs that bf16 rounding
    of w' and grad_w' alone is too much (measured on the dsara proxy on a CPU, batch 8, fresh
    weights: fp32 finite differences after bf16 w' and grad_w' give cosine 0.86 to all-fp32; in
    fp32, a 1e-4 N(0, 1) change of the train batch gives 0.94). The PGD examples stay as crafted.
    """
    fp32 = functools.partial(torch.autocast, x_t_adv.device.type, enabled=False)
    weights, alphas = model.weight_parameters(), model.arch_parameters()
    xi = w_opt.param_groups[0]["lr"]
    momentum = w_opt.param_groups[0]["momentum"]
    wd = w_opt.param_groups[0]["weight_decay"]
    original = [w.detach().clone() for w in weights]
    with fp32_math():
        g_train = torch.autograd.grad(ce(model, x_t_adv, y_t, fp32)[0], weights,
                                      allow_unused=True)
    g_train = _mean_some(dist, g_train)
    virtual = []
    for w, g in zip(original, g_train):
        buf = w_opt.state.get(weights[len(virtual)], {}).get("momentum_buffer")
        d = (torch.zeros_like(w) if g is None else g) + wd * w
        if buf is not None:
            d = d + momentum * buf
        virtual.append(w - xi * d)

    def assign(values):
        with torch.no_grad():
            for w, v in zip(weights, values):
                w.copy_(v)

    def train_alpha_grad():
        return torch.autograd.grad(ce(model, x_t_adv, y_t, fp32)[0], alphas)

    def unrolled(val_loss: Callable[[Ctx], torch.Tensor]) -> list[torch.Tensor]:
        with fp32_math():
            return _unrolled(val_loss)

    def _unrolled(val_loss: Callable[[Ctx], torch.Tensor]) -> list[torch.Tensor]:
        assign(virtual)
        grads = torch.autograd.grad(val_loss(fp32), alphas + weights, allow_unused=True)
        d_alpha = grads[: len(alphas)]
        d_w = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads[len(alphas):])]
        d_w = dist.mean(d_w)
        R = 0.01 / _norm(d_w).clamp_min(1e-12)  # in the weights' dtype (fp64 stays fp64)
        assign([w + R * d for w, d in zip(original, d_w)])
        g_pos = train_alpha_grad()
        assign([w - R * d for w, d in zip(original, d_w)])
        g_neg = train_alpha_grad()
        assign(original)
        return [a - xi * (p - n) / (2 * R) for a, p, n in zip(d_alpha, g_pos, g_neg)]

    return unrolled


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of `tensors`, in their own dtype (no float32 cast)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _mean_some(dist: Dist, grads) -> list[torch.Tensor | None]:
    """`dist.mean` over the non-None entries of `grads`, keeping the Nones in place."""
    present = [i for i, g in enumerate(grads) if g is not None]
    out = list(grads)
    for i, g in zip(present, dist.mean([grads[i] for i in present])):
        out[i] = g
    return out


def _graph_if(needed: bool) -> AbstractContextManager:
    """Build an autograd graph only when a gradient will be taken (saves the activations)."""
    return contextlib.nullcontext() if needed else torch.no_grad()
