"""Second-order L-inf attack: a Newton-like direction from a few Krylov iterations on the input
Hessian, never formed, only applied through Hessian-vector products (double backprop).

**[recon]** Qian et al. (arXiv 2207.01396; AMCS 2024) build adversarial examples from a
second-order approximation of the loss, with the direction found in a Krylov subspace of
Hessian-vector products (GMRES in the journal version); their code was not readable. This module is
our reconstruction: per outer step, g = grad_x L and H = Hessian_x L at the current point, m Krylov
iterations approximately solve (H + damping * I) d = g, and the step is step_size * sign(d),
projected onto the eps-ball around x and onto [0, 1] (as PGD). Every constant (m, the solver, the
damping, the outer steps and step size, the random start) is in `KrylovConfig`.

Why CG and MINRES are valid here: the loss is a sum of per-sample losses, so in eval mode H is
block-diagonal with one symmetric block per image, and every solver works per image (its scalars
have shape (B,)). For a piecewise-linear network (ReLU, max-pool, BatchNorm in eval mode)
H = J^T H_p J with H_p the softmax cross-entropy Hessian, positive semi-definite of rank <= C - 1;
g = J^T (p - e_y) lies in its range, so Hd = g is consistent and CG from 0 converges (to the
minimum-norm solution, in at most C - 1 iterations in exact arithmetic). Smooth activations
(swish, sparta) make H indefinite: CG then stops where it meets non-positive curvature, MINRES and
GMRES do not need definiteness. One Krylov iteration is the same for all three: d is parallel to g,
so m = 1 gives sign(g), the FGSM/PGD step.

Cost per outer step: one forward and backward with the graph kept (create_graph) and m
Hessian-vector products (each about one more backward through that graph), i.e. about 2m + 1
gradient evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DsaraError

Operator = Callable[[torch.Tensor], torch.Tensor]  # (B, ...) -> (B, ...), one matrix per image
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_TINY = 1e-30  # below this a Krylov denominator counts as zero (breakdown): stop that image
_RTOL = 1e-6  # a residual or new basis vector this small relative to its start is rounding


@dataclass(frozen=True)
class KrylovConfig:
    """The second-order attack's constants ([recon]: none of them is from the paper)."""

    iters: int = 5  # m: Krylov iterations = Hessian-vector products per outer step
    solver: str = "cg"  # cg | minres | gmres (see SOLVERS)
    damping: float = 0.0  # lambda in (H + lambda I) d = g; > 0 regularizes a near-singular H
    steps: int = 10  # outer steps (a new g and H at each)
    step_size: float | None = None  # L-inf step in [0, 1] pixel units; None = eps / 4
    random_start: bool = True  # uniform start in the eps-ball, as PGD

    def validate(self) -> KrylovConfig:
        if self.solver not in SOLVERS:
            raise DsaraError(f"unknown Krylov solver {self.solver!r}; solvers: "
                             f"{', '.join(SOLVERS)}")
        if self.iters < 1 or self.steps < 0:
            raise DsaraError(f"the Krylov attack needs iters >= 1 and steps >= 0; got "
                             f"iters={self.iters}, steps={self.steps}")
        if not self.damping >= 0 or (self.step_size is not None and not self.step_size >= 0):
            raise DsaraError(f"Krylov damping and step size must be >= 0; got {self.damping}, "
                             f"{self.step_size}")
        return self


# ----------------------------------------------------------------------------- Hessian products

def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image inner product: (B, ...) x (B, ...) -> (B,)."""
    return (a * b).flatten(1).sum(1)


def _per_image(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


def hessian_operator(loss_of_x: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                     ) -> tuple[torch.Tensor, Operator]:
    """(g, v -> Hv) of the scalar loss_of_x at x, by double backprop.

    The first backward keeps its graph (create_graph), so each product Hv is one more backward
    through it: the vector-Jacobian product v^T (dg/dx) = (Hv)^T since H is symmetric. The returned
    tensors are detached; the graph lives as long as the operator does."""
    x = x.detach().float().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of_x(x), x, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()  # None: H = 0 (linear model)

    return g.detach(), hvp


def sum_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch (per-image Hessian blocks, unscaled by batch size)."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def loss_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: LossFn = sum_ce) -> tuple[torch.Tensor, Operator]:
    """(grad_x L, v -> Hv) of loss_fn(model(x), y) at x, one Hessian block per image."""
    return hessian_operator(lambda xx: loss_fn(model(xx), y), x)


# ----------------------------------------------------------------------------- batched solvers

def cg(A: Operator, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Conjugate gradients from 0 for A d = b, per image; an image whose search direction meets
    non-positive curvature (A not positive definite there) keeps its last iterate."""
    d, r = torch.zeros_like(b), b.clone()
    p, rs = r.clone(), _dot(r, r)
    floor = (_RTOL ** 2) * rs  # converged: residual below _RTOL * ||b||
    active = rs > _TINY
    for _ in range(iters):
        Ap = A(p)
        pAp = _dot(p, Ap)
        active = active & (pAp > _TINY)
        alpha = torch.where(active, rs / pAp.clamp_min(_TINY), torch.zeros_like(rs))
        d = d + _per_image(alpha, d) * p
        r = r - _per_image(alpha, r) * Ap
        rs_new = _dot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(_TINY), torch.zeros_like(rs))
        p, rs = r + _per_image(beta, p) * p, rs_new
        active = active & (rs > floor)
    return d


def _least_squares_in_basis(basis: list[torch.Tensor], hbar: torch.Tensor, beta: torch.Tensor
                            ) -> torch.Tensor:
    """d = V y with y = argmin ||beta e1 - Hbar y|| per image (pseudo-inverse: rank-safe on CPU
    and CUDA alike). hbar: (B, k+1, k), basis: k tensors (B, ...)."""
    rhs = torch.zeros(hbar.shape[0], hbar.shape[1], 1, dtype=hbar.dtype, device=hbar.device)
    rhs[:, 0, 0] = beta
    y = torch.linalg.pinv(hbar) @ rhs  # (B, k, 1)
    V = torch.stack(basis, 1)  # (B, k, ...)
    return (y.view(*y.shape[:2], *([1] * (V.dim() - 2))) * V).sum(1)


def _krylov_basis(A: Operator, b: torch.Tensor, iters: int, full: bool):
    """Arnoldi (full=True: orthogonalize against every basis vector, GMRES) or Lanczos
    (full=False: against the last two only, valid for symmetric A, MINRES). Returns the basis,
    the (B, k+1, k) Hessenberg/tridiagonal matrix and ||b||. An image whose subspace became
    invariant (its solution is then exact) gets zero basis vectors from there on, so the
    least-squares step gives them zero weight; the loop stops when every image is there."""
    beta = _dot(b, b).sqrt()
    basis = [b / _per_image(beta.clamp_min(_TINY), b)]
    cols = []
    for j in range(iters):
        w = A(basis[j])
        scale = _dot(w, w).sqrt()
        h = torch.zeros(b.shape[0], iters + 1, dtype=b.dtype, device=b.device)
        for i in range(0 if full else max(0, j - 1), j + 1):
            h[:, i] = _dot(w, basis[i])
            w = w - _per_image(h[:, i], w) * basis[i]
        norm = _dot(w, w).sqrt()
        alive = norm > _RTOL * scale  # else A v_j lies in the subspace (to rounding)
        h[:, j + 1] = torch.where(alive, norm, torch.zeros_like(norm))
        cols.append(h)
        basis.append(w / _per_image(norm.clamp_min(_TINY), w) * _per_image(alive, w))
        if not bool(alive.any()):
            break
    k = len(cols)
    hbar = torch.stack(cols, 2)[:, :k + 1, :]  # (B, k+1, k)
    return basis[:k], hbar, beta


def gmres(A: Operator, b: torch.Tensor, iters: int) -> torch.Tensor:
    """GMRES from 0, no restart: the d in the m-dimensional Krylov subspace minimizing
    ||b - A d|| per image, through Arnoldi with full (modified Gram-Schmidt) orthogonalization."""
    basis, hbar, beta = _krylov_basis(A, b, iters, full=True)
    return _least_squares_in_basis(basis, hbar, beta)


def minres(A: Operator, b: torch.Tensor, iters: int) -> torch.Tensor:
    """MINRES from 0 for symmetric A: the same minimum-residual iterate as GMRES, built by the
    three-term Lanczos recurrence (no full orthogonalization) with the small tridiagonal
    least-squares problem solved directly rather than by Paige-Saunders' rotations."""
    basis, hbar, beta = _krylov_basis(A, b, iters, full=False)
    return _least_squares_in_basis(basis, hbar, beta)


SOLVERS: dict[str, Callable[[Operator, torch.Tensor, int], torch.Tensor]] = {
    "cg": cg,
    "minres": minres,
    "gmres": gmres,
}


# ----------------------------------------------------------------------------- the attack

def krylov_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     config: KrylovConfig = KrylovConfig(), loss_fn: LossFn = sum_ce
                     ) -> torch.Tensor:
    """d ~ (H + damping I)^-1 g at x after config.iters Krylov iterations, per image (B, ...).

    An image whose solver returns 0 (zero gradient, or breakdown in the first iteration) gets g
    itself, so sign(d) is never weaker than the first-order step."""
    config.validate()
    g, hvp = loss_hessian(model, x, y, loss_fn)
    damped = hvp if config.damping == 0 else (lambda v: hvp(v) + config.damping * v)
    d = SOLVERS[config.solver](damped, g, config.iters)
    empty = _per_image(_dot(d, d) == 0, d) | ~torch.isfinite(d)
    return torch.where(empty, g, d)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """x_adv clipped onto the L-inf eps-ball around x and onto the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


def so_krylov(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
              config: KrylovConfig = KrylovConfig(), loss_fn: LossFn = sum_ce,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The second-order L-inf attack ([recon], see the module docstring): config.steps steps of
    step_size * sign(d), d from `krylov_direction`, each projected onto the eps-ball and [0, 1].
    Returns detached images in x's dtype. Leaves the model's mode as the caller set it (craft in
    eval mode: in train mode BatchNorm couples the images of a batch)."""
    config.validate()
    if eps < 0:
        raise DsaraError(f"the Krylov attack needs eps >= 0, got {eps}")
    step = eps / 4 if config.step_size is None else config.step_size
    x32 = x.detach().float()
    x_adv = x32.clone()
    if config.random_start:
        noise = torch.rand(x32.shape, generator=generator, device=x.device, dtype=torch.float32)
        x_adv = project(x32, x32 + (2 * noise - 1) * eps, eps)
    for _ in range(config.steps):
        d = krylov_direction(model, x_adv, y, config, loss_fn)
        x_adv = project(x32, x_adv + step * d.sign(), eps)
    return x_adv.detach().to(x.dtype)


# ----------------------------------------------------------------------------- solver comparison

def compare_solvers(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    iters: tuple[int, ...] = (1, 2, 5, 10), solvers: tuple[str, ...] = tuple(SOLVERS),
                    damping: float = 0.0, repeats: int = 3) -> list[dict]:
    """For each solver and iteration count at the clean points x: the median wall time of one
    direction (m Hessian-vector products plus the solver's own vector work, the first backward
    excluded), the mean relative residual ||(H + damping I) d - g|| / ||g|| and the mean cosine
    between sign(d) and sign(g) (how far the step moves from the first-order one)."""
    import statistics
    import time

    g, hvp = loss_hessian(model, x, y)
    A = hvp if damping == 0 else (lambda v: hvp(v) + damping * v)
    g_norm = g.flatten(1).norm(dim=1).clamp_min(_TINY)
    rows = []
    for name in solvers:
        for m in iters:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                d = SOLVERS[name](A, g, m)
                times.append(time.perf_counter() - start)
            residual = (A(d) - g).flatten(1).norm(dim=1) / g_norm
            cos = (d.sign() * g.sign()).flatten(1).mean(1)
            rows.append({"solver": name, "iters": m, "seconds": statistics.median(times),
                         "relative_residual": residual.mean().item(),
                         "sign_agreement_with_g": cos.mean().item()})
    return rows
