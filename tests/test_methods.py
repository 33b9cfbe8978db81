"""The seed papers' training methods (dsara/train/methods): hand-checkable properties of each
objective, attacks that stay in the eps-ball and [0, 1], mart-ss never training on a test image,
LADDER's reconstruction at eps = 0, exact resume of every method, and bad options."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _shared import TINY_GENOTYPE
from torch import nn

from dsara.arch.archfile import from_genotype_text, save_architecture
from dsara.arch.baselines import build_baseline
from dsara.attacks.gradient import fgsm, pgd
from dsara.attacks.krylov import KrylovConfig, krylov_direction
from dsara.errors import DsaraError
from dsara.train import TrainConfig, losses, run
from dsara.train.checkpoint import load_checkpoint
from dsara.train.losses import AdvParams
from dsara.train.methods import METHODS, extra, iat, jsigr, ladder, method_options, so_at
from dsara.train.methods import bang as bang_mod
from dsara.train.methods.bang import BANGOptions, bang_ce
from dsara.train.methods.jsigr import JSIGROptions, jacobian_norm2, occlusion_mask

SYNTH = {"n_train": 96, "n_test": 32, "image_size": 8, "num_classes": 4}
NEW = ["iat", "iat-manifold", "mart-ss", "bang", "jsigr", "so-at", "ladder"]
LADDER_FAST = {"decoder_epochs": 1, "svm_epochs": 1, "svm_per_class": 8, "decoder_width": 8}


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(arch="resnet_tiny", out=str(out), dataset="synthetic", synthetic=SYNTH,
                epochs=2, batch_size=32, val_size=16, steps=1, val_steps=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.fixture
def model():
    return build_baseline("resnet_tiny", num_classes=4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    run(tiny_config(out, epochs=1), log=lambda s: None)
    return str(out)


def _write_pngs(folder, images: torch.Tensor) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def pool(tmp_path_factory, teacher):
    """Unlabeled images: 24 training images (labels hidden), 5 test and 3 validation images."""
    from dsara.train.split import load_data

    fit, val, test, _ = load_data(tiny_config("x").resolved())
    folder = tmp_path_factory.mktemp("pool")
    _write_pngs(folder / "train", fit.images[:24])
    _write_pngs(folder / "leak" / "test", test.images[:5])
    _write_pngs(folder / "leak" / "val", val.images[:3])
    return folder, test, val


def extra_kw(method, teacher, pool):
    if method == "mart-ss":
        return {"unlabeled": str(pool[0]), "teacher": teacher}
    if method == "ladder":
        return {"teacher": teacher, "method_options": LADDER_FAST}
    return {}


# ----------------------------------------------------------------------------- IAT

def test_mixup_loss_equals_the_soft_target_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 3, 1])
    perm, lam = torch.tensor([2, 0, 4, 1, 3]), 0.3
    soft = lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[perm], 4).float()
    assert iat.mix_ce(logits, y, lam, perm).item() == pytest.approx(
        F.cross_entropy(logits, soft).item(), abs=1e-6)


@pytest.mark.parametrize("name", ["iat", "iat-manifold"])
def test_iat_with_lambda_one_is_half_clean_half_adversarial_ce(monkeypatch, model, batch, name):
    x, y = batch
    monkeypatch.setattr(iat, "draw_mix", lambda n, a, g, d: (1.0, torch.randperm(n)))
    p = AdvParams(8 / 255, 2 / 255, 3, options=method_options(name, {}))
    model.eval()  # BatchNorm in eval mode: the mixed forward and the reference see the same stats
    model.train = lambda mode=True: model  # keep it there while the method switches modes
    loss, terms = METHODS[name].fn(model, x, y, p, generator=torch.Generator().manual_seed(0))
    x_adv = pgd(model, x, y, p.eps, p.step_size, p.steps, generator=torch.Generator().manual_seed(0))
    expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_iat_mixing_changes_the_loss_and_manifold_mixes_inside(model, batch):
    x, y = batch
    model.eval()
    lam, perm = 0.5, torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    points = iat.mix_points(model)
    assert points[0] is None and len(points) == 2  # the input and resnet_tiny's one stage boundary
    at_input = iat._forward_mixed(model, x, lam, perm, None)[0]
    inside = iat._forward_mixed(model, x, lam, perm, points[1])[0]
    plain = model(x)
    assert not torch.allclose(at_input, plain) and not torch.allclose(inside, at_input)
    assert not model.layers[1]._forward_pre_hooks  # the hook is removed afterwards


def test_cell_network_mix_points_are_the_cell_boundaries(tmp_path):
    from dsara.arch.build import build_model

    arch = save_architecture(from_genotype_text(TINY_GENOTYPE, "tiny"), tmp_path / "a.json")
    net = build_model(str(arch), num_classes=4, channels=4)
    assert iat.mix_points(net) == [None, *list(net.cells)[1:]]
    x = torch.rand(4, 3, 8, 8)
    out = iat._forward_mixed(net.eval(), x, 0.5, torch.tensor([1, 0, 3, 2]), net.cells[2])[0]
    assert out.shape == (4, 4) and not torch.allclose(out, net(x))


def test_beta_draws_are_reproducible_from_the_generator():
    a = iat.draw_mix(6, 1.0, torch.Generator().manual_seed(3), "cpu")
    b = iat.draw_mix(6, 1.0, torch.Generator().manual_seed(3), "cpu")
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and 0 <= a[0] <= 1


# ----------------------------------------------------------------------------- BANG

def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_bang_with_beta_zero_gives_the_gradients_of_plain_training(model, batch):
    x, y = batch
    p = AdvParams(8 / 255, 2 / 255, 1, options=BANGOptions(beta=0.0))
    torch.manual_seed(0)
    g_bang = _grads(model, bang_mod.bang(model, x, y, p)[0])
    torch.manual_seed(0)
    g_plain = _grads(model, F.cross_entropy(model(x), y))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(g_bang, g_plain))
    p = AdvParams(8 / 255, 2 / 255, 1, options=BANGOptions(beta=1.0))
    g_on = _grads(model, bang_mod.bang(model, x, y, p)[0])
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(g_on, g_plain))


def test_bang_scales_well_classified_samples_up_to_the_ratio():
    logits = torch.tensor([[9.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # sure, barely, wrong
    y = torch.tensor([0, 0, 0])
    loss, s = bang_ce(logits, y, BANGOptions(beta=1.0, epsilon=0.01, ratio=5.0))
    ce = F.cross_entropy(logits, y, reduction="none")
    g = (F.softmax(logits, 1) - F.one_hot(y, 2)).norm(dim=1)
    barely = ((g.max() + 0.01) / (g[1] + 0.01)).item()
    assert s.tolist() == pytest.approx([5.0, barely, 1.0])  # capped, scaled, misclassified: 1
    assert loss.item() == pytest.approx((s * ce).mean().item(), abs=1e-6)


# ----------------------------------------------------------------------------- J-SIGR

def test_jacobian_estimate_matches_the_frobenius_norm_of_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    x = torch.rand(64, 12, requires_grad=True)
    est = jacobian_norm2(lin(x), x, projections=400, generator=torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(lin.weight.pow(2).sum().item(), rel=0.05)
    est.backward()  # the penalty trains: its gradient reaches the weights
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert torch.allclose(lin.weight.grad, 2 * lin.weight, rtol=0.15, atol=0.02)


class _LooksAtTopLeft(nn.Module):
    """Logits from the top-left 4x4 square only (for the saliency mask)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16, 4)

    def forward(self, x, return_aux=False):
        out = self.fc(x[..., :4, :4].flatten(1))
        return (out, None) if return_aux else out


def test_occlusion_mask_marks_the_squares_the_model_ignores():
    torch.manual_seed(0)
    m, x = _LooksAtTopLeft(), torch.rand(6, 3, 8, 8)
    y = m(x).argmax(1)
    mask = occlusion_mask(m, x, y, patch=4, fraction=0.75)
    assert mask.shape == (6, 1, 8, 8)
    assert (mask[..., :4, :4] == 0).all() and (mask[..., 4:, :].sum() + mask[..., :4, 4:].sum()
                                               == 6 * 48)
    loss, terms = jsigr.jsigr(m, x, y, AdvParams(0.0, 0.0, 1, options=JSIGROptions(
        unimportant=0.75, patch=4)))
    assert terms["masked_grad"].item() == pytest.approx(0.0, abs=1e-12)  # no gradient off-square
    assert terms["jacobian"].item() > 0


# ----------------------------------------------------------------------------- SO-AT

@pytest.mark.parametrize("solver", ["cg", "minres", "gmres"])
def test_krylov_direction_on_a_quadratic_loss_is_the_newton_step(solver):
    g = torch.Generator().manual_seed(0)
    n = 6
    m = torch.randn(n, n, generator=g)
    a = m @ m.T + n * torch.eye(n)  # symmetric positive definite
    b = torch.randn(n, generator=g)

    def quadratic(z, _y):  # sum over the batch of 1/2 z^T A z - b^T z
        return (0.5 * (z @ a * z).sum(1) - z @ b).sum()

    x = torch.rand(3, n, generator=g)
    d = krylov_direction(nn.Flatten(), x, torch.zeros(3, dtype=torch.long),
                         KrylovConfig(iters=n, solver=solver), loss_fn=quadratic)
    newton = torch.linalg.solve(a, (x @ a - b).T).T  # A^-1 g with g = A x - b, per row
    assert torch.allclose(d, newton, atol=1e-4, rtol=1e-4)


def test_so_at_with_one_krylov_iteration_is_fgsm(model, batch):
    x, y = batch
    p = AdvParams(8 / 255, 8 / 255, 1, options=method_options("so-at", {"iters": 1}),
                  craft_mode="eval", start="zero")  # so-at's defaults (METHODS)
    reference = copy.deepcopy(model)  # so_at's train-mode forward moves the BN statistics
    loss, _ = so_at.so_at(model, x, y, p)
    x_fgsm = fgsm(reference.eval(), x, y, 8 / 255, random_start=False)
    expected = F.cross_entropy(reference.train()(x_fgsm), y)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    p5 = AdvParams(8 / 255, 8 / 255, 1, options=method_options("so-at", {"iters": 5}),
                   craft_mode="eval", start="zero")
    assert so_at.so_at(model, x, y, p5)[0].item() != pytest.approx(loss.item(), abs=1e-6)


# ----------------------------------------------------------------------------- attacks in the ball

@pytest.mark.parametrize("name,options", [
    ("iat", {}), ("iat-manifold", {}), ("bang", {"adversarial": True}),
    ("jsigr", {"adversarial": True}), ("so-at", {})])  # AdvParams' uniform start
def test_every_adversarial_input_stays_in_the_eps_ball_and_the_image_box(
        monkeypatch, model, batch, name, options):
    x, y = batch
    x = x.clamp(0.02, 0.98)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # pixels on the box's faces
    seen = []

    def recording(m, xx, yy, eps, *a, **k):
        out = pgd(m, xx, yy, eps, *a, **k)
        seen.append((xx, out, eps))
        return out

    if name == "so-at":
        krylov = so_at.so_krylov

        def recording(m, xx, yy, eps, *a, **k):  # noqa: F811 (the Krylov attack, same check)
            out = krylov(m, xx, yy, eps, *a, **k)
            seen.append((xx, out, eps))
            return out
        monkeypatch.setattr(so_at, "so_krylov", recording)
    else:
        monkeypatch.setattr(losses, "pgd", recording)  # every method crafts through losses.craft
    p = AdvParams(8 / 255, 4 / 255, 3, options=method_options(name, options))
    loss, _ = METHODS[name].fn(model, x, y, p, generator=torch.Generator().manual_seed(0))
    assert seen and math.isfinite(loss.item())
    for xx, out, eps in seen:
        assert (out - xx).abs().max() <= eps + 1e-6 and out.min() >= 0 and out.max() <= 1
        assert (out - xx).abs().max() > eps / 2  # the attack moved


# ----------------------------------------------------------------------------- mart-ss

def test_mart_ss_never_trains_on_a_test_image(tmp_path, monkeypatch, teacher, pool):
    folder, test, val = pool
    fed = []
    original = extra.MixedLoader.epoch

    def recording(self, epoch):
        for x, y in original(self, epoch):
            fed.append((x * 255).round().to(torch.uint8))
            yield x, y

    monkeypatch.setattr(extra.MixedLoader, "epoch", recording)
    cfg = tiny_config(tmp_path / "run", method="mart-ss", epochs=1, unlabeled=str(folder),
                      teacher=teacher, augment=False)
    run(cfg, log=lambda s: None)
    summary = json.loads((tmp_path / "run" / "pseudo_labels.json").read_text())
    assert summary["dropped_test_or_val_duplicates"] == 8 and summary["pseudo_labelled"] == 24
    rows = {bytes(r) for b in fed for r in b.flatten(1).numpy()}
    assert fed and all(len(b) == 32 for b in fed)  # 16 labeled + 16 pseudo-labelled
    assert not any(bytes(r) in rows for r in test.images.flatten(1).numpy())
    assert not any(bytes(r) in rows for r in val.images.flatten(1).numpy())


def test_mart_ss_needs_a_pool_and_a_teacher_of_the_same_split(tmp_path, teacher, pool):
    with pytest.raises(DsaraError, match="mart-ss needs --unlabeled DIR"):
        run(tiny_config(tmp_path / "a", method="mart-ss", teacher=teacher))
    with pytest.raises(DsaraError, match="trained with another seed"):
        run(tiny_config(tmp_path / "b", method="mart-ss", teacher=teacher,
                        unlabeled=str(pool[0]), seed=1))
    with pytest.raises(DsaraError, match="not for pgd-at"):
        run(tiny_config(tmp_path / "c", teacher=teacher))


# ----------------------------------------------------------------------------- LADDER

def test_ladder_with_eps_zero_returns_the_decoders_reconstruction(model):
    torch.manual_seed(0)
    o = ladder.LadderOptions(**LADDER_FAST)
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    model.eval()
    z = ladder.latent(model, x)
    dec = ladder.train_decoder(z, x, o, torch.Generator().manual_seed(0))
    svms = ladder.train_svms(z, y, 4, o, torch.Generator().manual_seed(0))
    t = (y + 1) % 4
    assert torch.allclose(ladder.generate(z, y, t, svms, dec, 0.0), dec(z).detach())
    moved = ladder.generate(z, y, t, svms, dec, 2.0)
    assert not torch.allclose(moved, dec(z).detach()) and 0 <= moved.min() and moved.max() <= 1
    # the step lowers the source class's SVM score side: s < t sits on the +1 side
    pair = svms.pair_index(y, t)
    z2 = z - 1.0 * svms.attention(z, pair) * svms.w[pair] * torch.where(y < t, 1.0, -1.0)[:, None]
    before = svms.score(z, pair) * torch.where(y < t, 1.0, -1.0)
    after = svms.score(z2, pair) * torch.where(y < t, 1.0, -1.0)
    assert (after < before).float().mean() > 0.9


def test_ladder_pair_index_is_the_position_in_the_pair_list():
    svms = ladder.PairSVMs(3, 5)
    s = torch.tensor([i for i, j in svms.pairs] + [j for i, j in svms.pairs])
    t = torch.tensor([j for i, j in svms.pairs] + [i for i, j in svms.pairs])
    assert svms.pair_index(s, t).tolist() == list(range(10)) * 2


def test_ladder_fine_tunes_the_teacher_and_caches_its_set(tmp_path, teacher, monkeypatch):
    cfg = tiny_config(tmp_path / "run", method="ladder", teacher=teacher, epochs=1,
                      method_options=LADDER_FAST)
    logs, weights = [], {}
    build = ladder.build_set

    def spy(model, *a, **k):
        weights.update({k: v.clone() for k, v in model.state_dict().items()})
        return build(model, *a, **k)

    monkeypatch.setattr(ladder, "build_set", spy)
    run(cfg, max_epochs=0, log=logs.append)  # setup only
    best = load_checkpoint(f"{teacher}/best.pt")["model"]
    assert all(torch.equal(v, best[k]) for k, v in weights.items())  # the teacher's latent space
    cached = torch.load(tmp_path / "run" / "ladder_set.pt", weights_only=True)
    assert cached["images"].dtype == torch.uint8 and len(cached["labels"]) == 96 - 16
    assert any("generated 80 images" in line for line in logs)
    logs.clear()
    run(cfg, log=logs.append)
    assert not any("ladder: generated" in line for line in logs)  # read back, not rebuilt
    # fine-tuning starts from the teacher: at a vanishing learning rate the weights stay its own
    still = tiny_config(tmp_path / "still", method="ladder", teacher=teacher, epochs=1, lr=1e-12,
                        method_options=LADDER_FAST)
    run(still, log=lambda s: None)
    tuned = load_checkpoint(tmp_path / "still" / "last.pt")["model"]
    assert all(torch.allclose(tuned[k], v, atol=1e-7) for k, v in best.items()
               if v.is_floating_point() and "running" not in k)


# ----------------------------------------------------------------------------- every method

@pytest.mark.parametrize("method", NEW)
def test_every_new_method_resumes_exactly(tmp_path, method, teacher, pool):
    kw = extra_kw(method, teacher, pool)
    straight = run(tiny_config(tmp_path / "a", method=method, **kw), log=lambda s: None)
    cfg = tiny_config(tmp_path / "b", method=method, **kw)
    run(cfg, max_epochs=1, log=lambda s: None)
    resumed = run(cfg, log=lambda s: None)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert resumed.epochs_done == 2 and all(torch.equal(v, b[k]) for k, v in a.items())
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history]
    assert all(math.isfinite(v) for v in straight.history[-1]["train"].values())


def test_options_are_typed_filled_in_and_checked(tmp_path):
    cfg = tiny_config(tmp_path, method="iat", method_options={"alpha": 2}).resolved()
    assert cfg.method_options == {"alpha": 2.0}
    assert tiny_config(tmp_path, method="bang").resolved().method_options["beta"] == 1.0
    with pytest.raises(DsaraError, match="unknown method option 'alpah' for iat; options: alpha"):
        tiny_config(tmp_path, method="iat", method_options={"alpah": 1}).resolved()
    with pytest.raises(DsaraError, match="bang.adversarial must be bool"):
        tiny_config(tmp_path, method="bang", method_options={"adversarial": 1}).resolved()
    with pytest.raises(DsaraError, match="'pgd-at' takes no method_options"):
        tiny_config(tmp_path, method_options={"alpha": 1}).resolved()
    with pytest.raises(DsaraError, match="alpha must be > 0"):
        tiny_config(tmp_path, method="iat", method_options={"alpha": 0}).resolved()
    assert np.isfinite(1.0)


def test_so_at_starts_at_x_or_uniformly():
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    p = AdvParams(8 / 255, 2 / 255, 1, options=method_options("so-at", {}), start="normal")
    with pytest.raises(DsaraError, match="so-at starts at x"):
        so_at.so_at(build_baseline("resnet_tiny", num_classes=4), x, y, p)


def test_method_benchmark_times_every_method_against_pgd_at():
    from dsara.bench.methods import MethodBenchConfig, markdown, run_bench

    report = run_bench(MethodBenchConfig(arch="resnet_tiny", cells=0, image_size=8, batch=4,
                                         rounds=1, warmup=0))
    rows = {r["case"]: r for r in report["rows"]}
    assert set(METHODS) <= set(rows) and rows["pgd-at"]["ratio_to_pgd_at"] == 1.0
    assert all(r["median_ms"] > 0 for r in rows.values())
    assert "| so-at |" in markdown(report) and report["dtype"] == "fp32"


def test_unused_training_images_are_neither_trained_nor_validated_on(tmp_path):
    from dsara.train.methods.mart_ss import read_pool, write_unused_training_images
    from dsara.train.split import load_data

    cfg = tiny_config(tmp_path / "run", train_size=40)
    assert write_unused_training_images(cfg, 100, tmp_path / "pool") == 96 - 16 - 40
    pool = {bytes(r) for r in read_pool(tmp_path / "pool", 8).flatten(1).numpy()}
    fit, val, _, _ = load_data(cfg.resolved())
    assert len(pool) == 40 and not any(
        bytes(r) in pool for s in (fit, val) for r in s.images.flatten(1).numpy())
