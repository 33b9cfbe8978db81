"""The second-order Krylov attack: Hessian-vector products, the batched solvers, the attack."""

import pytest
import torch
from torch import nn

from dsara.attacks.gradient import fgsm
from dsara.attacks.krylov import (
    SOLVERS,
    KrylovConfig,
    cg,
    gmres,
    hessian_operator,
    krylov_direction,
    loss_hessian,
    minres,
    so_krylov,
    sum_ce,
)
from dsara.errors import DsaraError


def matrices(n=6, batch=2, kind="spd", seed=0):
    """(B, n, n) matrices, a different one per image."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    if kind == "spd":
        return m @ m.transpose(1, 2) + 0.5 * torch.eye(n, dtype=torch.float64)
    if kind == "psd-singular":  # rank n - 2
        m[:, :, -2:] = 0
        return m @ m.transpose(1, 2)
    if kind == "symmetric":  # indefinite
        return m + m.transpose(1, 2)
    return m + 3 * torch.eye(n, dtype=torch.float64)  # general, non-symmetric


def apply(A):
    return lambda v: (A @ v.unsqueeze(-1)).squeeze(-1)


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


def batch(n=4):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.arange(n) % 5


def test_hessian_vector_product_is_Av_on_a_quadratic():
    A = matrices(kind="symmetric").float()  # indefinite, a different one per image
    c = torch.tensor([[1.0, -2, 0, 3, 1, 0], [0.5, 0, 0, -1, 2, 1]])

    def loss(x):  # sum over images of 1/2 x^T A_b x + c_b^T x
        return 0.5 * (x.unsqueeze(1) @ A @ x.unsqueeze(-1)).sum() + (c * x).sum()

    x, v = torch.randn(2, 6), torch.randn(2, 6)
    g, hvp = hessian_operator(loss, x)
    torch.testing.assert_close(hvp(v), apply(A)(v))
    torch.testing.assert_close(g, apply(A)(x) + c)
    torch.testing.assert_close(hvp(2 * v), 2 * apply(A)(v))  # the graph survives reuse


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_is_exact_after_n_iterations_on_spd(name):
    A, b = matrices(kind="spd"), torch.randn(2, 6, dtype=torch.float64)
    d = SOLVERS[name](apply(A), b, 6)
    torch.testing.assert_close(d, torch.linalg.solve(A, b))


def test_one_iteration_is_parallel_to_the_gradient_for_every_solver():
    A, b = matrices(kind="spd"), torch.randn(2, 6, dtype=torch.float64)
    for solver in SOLVERS.values():
        d = solver(apply(A), b, 1)
        cos = (d * b).sum(1) / (d.norm(dim=1) * b.norm(dim=1))
        torch.testing.assert_close(cos, torch.ones(2, dtype=torch.float64))


def test_cg_on_a_singular_consistent_system_gives_the_minimum_norm_solution():
    A = matrices(kind="psd-singular")
    b = apply(A)(torch.randn(2, 6, dtype=torch.float64))  # in the range of A
    d = cg(apply(A), b, 6)
    torch.testing.assert_close(d, (torch.linalg.pinv(A) @ b.unsqueeze(-1)).squeeze(-1))


def test_minres_and_gmres_solve_symmetric_indefinite_and_gmres_general():
    b = torch.randn(2, 6, dtype=torch.float64)
    S = matrices(kind="symmetric")
    for solver in (minres, gmres):
        torch.testing.assert_close(solver(apply(S), b, 6), torch.linalg.solve(S, b))
    G = matrices(kind="general")
    torch.testing.assert_close(gmres(apply(G), b, 6), torch.linalg.solve(G, b))
    # fewer iterations: the residual never grows with m (minimum residual over nested subspaces)
    res = [(b - apply(S)(minres(apply(S), b, m))).norm(dim=1) for m in range(1, 7)]
    assert all((r1 <= r0 + 1e-9).all() for r0, r1 in zip(res, res[1:], strict=False))


def test_cg_stops_on_negative_curvature():
    A = -matrices(kind="spd")  # negative definite: the first curvature p^T A p < 0
    b = torch.randn(2, 6, dtype=torch.float64)
    assert (cg(apply(A), b, 4) == 0).all()


def test_input_hessian_of_a_relu_net_is_symmetric_and_psd():
    model, (x, y) = tiny_net(), batch()
    _, hvp = loss_hessian(model, x, y)
    u, v = torch.randn_like(x), torch.randn_like(x)
    uHv, vHu = (u * hvp(v)).flatten(1).sum(1), (v * hvp(u)).flatten(1).sum(1)
    torch.testing.assert_close(uHv, vHu, rtol=1e-4, atol=1e-6)
    assert ((u * hvp(u)).flatten(1).sum(1) >= -1e-6).all()  # J^T H_p J
    # per image: image 0's product does not depend on image 1's vector
    w = v.clone()
    w[1:] = 0
    torch.testing.assert_close(hvp(w)[0], hvp(v)[0])


def test_one_krylov_step_without_start_is_fgsm():
    model, (x, y) = tiny_net(), batch()
    eps = 8 / 255
    for solver in SOLVERS:
        cfg = KrylovConfig(iters=1, solver=solver, steps=1, step_size=eps, random_start=False)
        torch.testing.assert_close(so_krylov(model, x, y, eps, cfg),
                                   fgsm(model, x, y, eps, random_start=False))


def test_more_iterations_change_the_direction():
    model, (x, y) = tiny_net(), batch()
    d1 = krylov_direction(model, x, y, KrylovConfig(iters=1))
    d5 = krylov_direction(model, x, y, KrylovConfig(iters=5))
    assert (d1.sign() != d5.sign()).any()
    g, hvp = loss_hessian(model, x, y)
    # more iterations leave a smaller residual ||H d - g|| (CG in the H-norm, checked loosely)
    r1 = (hvp(d1) - g).flatten(1).norm(dim=1)
    r5 = (hvp(d5) - g).flatten(1).norm(dim=1)
    assert (r5 < r1).all()


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_attack_stays_in_the_ball_and_raises_the_loss(solver):
    model, (x, y) = tiny_net(), batch(6)
    eps = 4 / 255
    cfg = KrylovConfig(iters=3, solver=solver, steps=4)
    x_adv = so_krylov(model, x, y, eps, cfg, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert sum_ce(model(x_adv), y) > sum_ce(model(x), y)


def test_config_errors_name_the_fix():
    with pytest.raises(DsaraError, match="cg, minres, gmres"):
        KrylovConfig(solver="bicg").validate()
    with pytest.raises(DsaraError, match="iters >= 1"):
        KrylovConfig(iters=0).validate()
    with pytest.raises(DsaraError, match="damping"):
        KrylovConfig(damping=-1).validate()


def test_so_krylov_is_an_evaluate_attack():
    from dsara.data.datasets import ImageSet
    from dsara.evaluate.run import evaluate

    x, y = batch(6)
    data = ImageSet((x * 255).round().to(torch.uint8), y)
    report = evaluate(tiny_net(), data, ["clean", "pgd20", "so-krylov"], 8 / 255)
    assert set(report.accuracy) == {"clean", "pgd20", "so-krylov"}
    assert report.accuracy["so-krylov"] <= report.accuracy["clean"]


def test_compare_solvers_rows():
    from dsara.attacks.krylov import compare_solvers

    model, (x, y) = tiny_net(), batch()
    rows = compare_solvers(model, x, y, iters=(1, 4), repeats=1)
    assert [(r["solver"], r["iters"]) for r in rows] == [
        (s, m) for s in SOLVERS for m in (1, 4)]
    by = {(r["solver"], r["iters"]): r for r in rows}
    for s in SOLVERS:  # one iteration: sign(d) = sign(g); more: a smaller residual
        assert by[(s, 1)]["sign_agreement_with_g"] == pytest.approx(1.0)
        assert by[(s, 4)]["relative_residual"] < by[(s, 1)]["relative_residual"]
