"""Adversarial training: hand-computed objectives, every method runs, exact resume, the FGSM-RS
guard, model selection on validation, and bad input."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _shared import TINY_GENOTYPE
from torch import nn

from dsara.arch.archfile import from_genotype_text, save_architecture
from dsara.arch.baselines import build_baseline
from dsara.attacks.gradient import fgsm, pgd
from dsara.cli import main
from dsara.errors import DsaraError
from dsara.train import TrainConfig, losses, run
from dsara.train import loop as train_loop
from dsara.train.checkpoint import build_from_spec, load_checkpoint, model_spec
from dsara.train.config import config_from_dict
from dsara.train.loop import lr_factor
from dsara.train.losses import (
    AdvParams,
    craft,
    fgsm_rs,
    mart,
    mart_objective,
    pgd_at,
    trades,
    trades_objective,
)
from dsara.train.methods import METHODS, OPTIONS, get_method, so_at

SYNTH = {"n_train": 96, "n_test": 32, "image_size": 8, "num_classes": 4}


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(arch="resnet_tiny", out=str(tmp_path / "run"), dataset="synthetic",
                synthetic=SYNTH, epochs=2, batch_size=32, val_size=16, steps=1, val_steps=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def arch_file(tmp_path):
    return str(save_architecture(from_genotype_text(TINY_GENOTYPE, "tiny"), tmp_path / "a.json"))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


# ----------------------------------------------------------------------------- objectives

# Two distinct rows, so a sum instead of a mean, one row's weight for both, or a reversed KL
# gives another value. Logits chosen for round probabilities:
P = [(0.5, 0.5), (0.2, 0.8)]  # softmax of the clean logits (0, 0) and (0, ln 4)
Q = [(0.75, 0.25), (0.9, 0.1)]  # softmax of the adversarial logits (ln 3, 0) and (ln 9, 0)
LABELS = [0, 1]
CLEAN = torch.tensor([[0.0, 0.0], [0.0, math.log(4)]], dtype=torch.float64)
ADV = torch.tensor([[math.log(3), 0.0], [math.log(9), 0.0]], dtype=torch.float64)
Y = torch.tensor(LABELS)


def _kl(p, q):
    return sum(a * (math.log(a + 1e-12) - math.log(b + 1e-12)) for a, b in zip(p, q, strict=True))


def _mean(values):
    return sum(values) / len(values)


def test_trades_objective_matches_hand_computation():
    ce = _mean([-math.log(p[y]) for p, y in zip(P, LABELS, strict=True)])
    kl = _mean([_kl(p, q) for p, q in zip(P, Q, strict=True)])
    loss, terms = trades_objective(CLEAN, ADV, Y, beta=6.0)
    assert terms["ce_clean"].item() == pytest.approx(ce, abs=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(ce + 6 * kl, abs=1e-6)
    mutants = {"sum over the batch": 2 * ce + 12 * kl, "beta on the CE": 6 * ce + kl,
               "KL(q || p)": ce + 6 * _mean([_kl(q, p) for p, q in zip(P, Q, strict=True)]),
               "KL of the clean input with itself": ce}
    for name, value in mutants.items():
        assert abs(value - loss.item()) > 1e-3, name


def _mart_by_hand(weight_of):
    runner_up = [1, 0]  # row 1: q's top class is y = 0, so class 1; row 2: the top class, 0
    bce = _mean([-math.log(q[y]) - math.log(1.0001 - q[r] + 1e-12)
                 for q, y, r in zip(Q, LABELS, runner_up, strict=True)])
    robust = _mean([_kl(p, q) * weight_of(p, q, y) for p, q, y in zip(P, Q, LABELS, strict=True)])
    return bce, robust


def test_mart_objective_matches_hand_computation():
    bce, robust = _mart_by_hand(lambda p, q, y: 1.0000001 - p[y])  # 1 - p_y(clean)
    loss, terms = mart_objective(CLEAN, ADV, Y, beta=6.0)
    assert terms["bce"].item() == pytest.approx(bce, abs=1e-6)
    assert terms["weighted_kl"].item() == pytest.approx(robust, abs=1e-6)
    assert loss.item() == pytest.approx(bce + 6 * robust, abs=1e-6)
    wrong_weights = {"1 - p_y(adv)": lambda p, q, y: 1 - q[y], "no weight": lambda p, q, y: 1.0,
                     "p_y(clean)": lambda p, q, y: p[y]}
    for name, weight in wrong_weights.items():
        b, r = _mart_by_hand(weight)
        assert abs(b + 6 * r - loss.item()) > 1e-3, name


def _clean_grad(objective, clean):
    clean = clean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(clean, ADV, Y, beta=6.0)[0], clean)
    return grad


def test_trades_gradient_flows_through_the_clean_probabilities():
    """d loss / d clean logits = (p - onehot) / B + beta p (ln p - ln q - KL) / B, the KL part
    included: a detached p(x) in the KL term would leave only the CE part."""
    p, q = CLEAN.softmax(1), ADV.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1, keepdim=True)
    ce_part = (p - F.one_hot(Y, 2)) / 2
    expected = ce_part + 6 * p * (p.log() - q.log() - kl) / 2
    grad = _clean_grad(trades_objective, CLEAN)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert (grad - ce_part).abs().max() > 1e-3  # what a detached p(x) would lose


def test_mart_gradient_flows_through_the_clean_probabilities():
    """MART's clean logits enter through KL(p || q) and the weight 1 - p_y: both carry gradient
    (a detached p_clean would give zero here)."""
    p, q = CLEAN.softmax(1), ADV.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1, keepdim=True)
    p_y = p.gather(1, Y[:, None])
    weight = 1.0000001 - p_y
    d_kl = p * (p.log() - q.log() - kl)
    d_weight = -p_y * (F.one_hot(Y, 2) - p)
    expected = 6 * (weight * d_kl + kl * d_weight) / 2
    grad = _clean_grad(mart_objective, CLEAN)
    assert torch.allclose(grad, expected, atol=1e-6) and grad.abs().max() > 1e-2


def test_mart_runner_up_is_the_top_wrong_class():
    adv = torch.tensor([[0.1, 3.0, 2.0]])  # predicted 1; for y = 1 the runner-up is class 2
    p = F.softmax(adv, 1)[0]
    _, terms = mart_objective(adv, adv, torch.tensor([1]), beta=0.0)
    assert terms["margin"].item() == pytest.approx(-math.log(1.0001 - p[2].item()), abs=1e-6)


def test_pgd_at_and_fgsm_rs_are_ce_on_their_attack(batch):
    x, y = batch
    model = build_baseline("resnet_tiny", num_classes=4)
    p = AdvParams(eps=8 / 255, step_size=2 / 255, steps=3)
    loss, terms = pgd_at(model, x, y, p, generator=torch.Generator().manual_seed(0))
    x_adv = pgd(model, x, y, p.eps, p.step_size, p.steps, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), abs=1e-6)
    p = AdvParams(eps=8 / 255, step_size=1.25 * 8 / 255, steps=1)
    loss, _ = fgsm_rs(model, x, y, p, generator=torch.Generator().manual_seed(0))
    x_adv = fgsm(model, x, y, p.eps, generator=torch.Generator().manual_seed(0))  # 1.25 eps step
    assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), abs=1e-6)


def test_trades_kl_is_on_the_adversarial_input(batch):
    x, y = batch
    model = build_baseline("resnet_tiny", num_classes=4)
    loss, terms = trades(model, x, y, AdvParams(8 / 255, 2 / 255, 3, beta=6.0, craft_mode="eval"),
                         generator=torch.Generator().manual_seed(0))
    assert terms["kl"].item() > 0  # zero would mean the KL saw the clean input twice
    assert loss.item() == pytest.approx(terms["ce_clean"].item() + 6 * terms["kl"].item(), rel=1e-5)
    assert model.training  # crafted in eval mode, handed back in train mode


def test_mart_is_its_objective_on_its_attack(batch):
    x, y = batch
    model = build_baseline("resnet_tiny", num_classes=4)
    p = AdvParams(8 / 255, 2 / 255, 2, beta=6.0, craft_mode="eval", start="normal")
    before = copy.deepcopy(model.state_dict())
    loss, terms = mart(model, x, y, p, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())
    assert loss.item() == pytest.approx(terms["bce"].item() + 6 * terms["weighted_kl"].item(),
                                        rel=1e-5)
    model.load_state_dict(before)  # the same BatchNorm statistics, the same attack
    x_adv = craft(model, x, y, p, generator=torch.Generator().manual_seed(0))
    expected, _ = mart_objective(model(x), model(x_adv), y, 6.0)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_method_defaults_are_the_standard_recipes():
    assert {m: (METHODS[m].step_factor, METHODS[m].steps, METHODS[m].craft_mode,
                METHODS[m].start) for m in ("pgd-at", "trades", "mart", "fgsm-rs")} == {
        "pgd-at": (0.25, 10, "train", "uniform"), "trades": (0.25, 10, "eval", "normal"),
        "mart": (0.25, 10, "eval", "normal"), "fgsm-rs": (1.25, 1, "train", "uniform")}
    cfg = TrainConfig(arch="resnet18", out="x", method="fgsm-rs").resolved()
    assert cfg.step_size == pytest.approx(1.25 * 8 / 255) and cfg.steps == 1
    cfg = TrainConfig(arch="resnet18", out="x").resolved()
    assert (cfg.step_size, cfg.steps, cfg.beta) == (pytest.approx(2 / 255), 10, 6.0)
    cfg = TrainConfig(arch="resnet18", out="x", method="mart").resolved()
    assert (cfg.craft_mode, cfg.attack_start) == ("eval", "normal")


def test_fgsm_rs_refuses_more_than_one_step(capsys):
    with pytest.raises(DsaraError, match="fgsm-rs takes exactly one attack step .*got steps = 3"):
        TrainConfig(arch="resnet18", out="x", method="fgsm-rs", steps=3).resolved()
    assert main(["train", "resnet_tiny", "--method", "fgsm-rs", "--steps", "3", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsara: error: fgsm-rs takes exactly one") and "\n" not in err


class Spy(nn.Module):
    """A linear classifier that records (training, drop_path_prob, inside PGD?, grad enabled?) at
    every forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.drop_path_prob, self.calls, self.in_pgd = 0.5, [], False

    def forward(self, x, return_aux=False):
        self.calls.append((self.training, self.drop_path_prob, self.in_pgd,
                           torch.is_grad_enabled()))
        logits = self.fc(x.flatten(1))
        return (logits, None) if return_aux else logits


ATTACKING = [m for m in METHODS if m != "ladder"]  # ladder trains on a generated set, no PGD


@pytest.mark.parametrize("method", ATTACKING)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_drop_path_is_off_while_any_attack_is_crafted(batch, method, mode, monkeypatch):
    x, y = batch
    model = Spy().train()

    def spying(attack):  # marks the forwards of the attack primitives the methods craft with
        def marked(m, *args, **kw):
            m.in_pgd = True
            try:
                return attack(m, *args, **kw)
            finally:
                m.in_pgd = False
        return marked

    monkeypatch.setattr(losses, "pgd", spying(pgd))
    monkeypatch.setattr(so_at, "so_krylov", spying(so_at.so_krylov))
    options = OPTIONS.get(method)
    if options is not None and "adversarial" in options.__dataclass_fields__:
        options = options(adversarial=True)  # bang / jsigr on PGD examples
    p = AdvParams(8 / 255, 2 / 255, 1 if method == "fgsm-rs" else 3, craft_mode=mode,
                  options=options() if isinstance(options, type) else options)
    get_method(method).fn(model, x, y, p, generator=torch.Generator().manual_seed(0))
    crafting = [c for c in model.calls if c[2]]
    training = [c for c in model.calls if c[0] and not c[2] and c[3]]  # training-loss forwards
    assert len(crafting) >= p.steps and training  # an attack that bypasses `craft` has none
    assert all(c[:2] == (mode == "train", 0.0) for c in crafting), crafting
    assert all(c[1] == 0.5 for c in training), training
    assert model.training and model.drop_path_prob == 0.5  # handed back as it came


@pytest.mark.parametrize("start", ["normal", "uniform", "zero"])
def test_attack_starts(batch, start):
    x, y = batch
    x = 0.1 + 0.8 * x  # away from the [0, 1] border, so no start is clamped
    model = build_baseline("resnet_tiny", num_classes=4).eval()
    p = AdvParams(8 / 255, 0.0, 1, start=start)  # a zero step: x_adv is the start itself
    delta = craft(model, x, y, p, generator=torch.Generator().manual_seed(5)) - x
    if start == "normal":  # x + 0.001 N(0, 1), the generator's first draw
        expected = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(delta, expected, atol=1e-7)
    elif start == "uniform":
        assert delta.abs().max() <= 8 / 255 + 1e-6 and delta.std() > 8 / 255 / 3
    else:
        assert delta.abs().max() < 1e-7


def test_auxiliary_loss_on_the_clean_input(arch_file, batch):
    x, y = batch
    spec = model_spec(arch_file, 4, (0.5,) * 3, (0.25,) * 3, channels=4, auxiliary_weight=0.4)
    model = build_from_spec(spec).train()
    p = AdvParams(8 / 255, 2 / 255, 2, aux_weight=0.4, craft_mode="eval", start="normal",
                  aux_input="clean")
    before = copy.deepcopy(model.state_dict())  # BatchNorm running stats move in train mode
    loss, terms = pgd_at(model, x, y, p, generator=torch.Generator().manual_seed(0))
    model.load_state_dict(before)  # the same order: clean forward, eval-mode attack, adv forward
    aux_clean = model(x, return_aux=True)[1]
    x_adv = craft(model, x, y, p, generator=torch.Generator().manual_seed(0))
    logits, aux_adv = model(x_adv, return_aux=True)
    ce, aux_ce = F.cross_entropy(logits, y), F.cross_entropy(aux_clean, y)
    assert terms["aux_ce"].item() == pytest.approx(aux_ce.item(), abs=1e-5)
    assert loss.item() == pytest.approx(ce.item() + 0.4 * aux_ce.item(), abs=1e-5)
    assert abs(F.cross_entropy(aux_adv, y).item() - aux_ce.item()) > 1e-4  # the mutation differs


def test_learning_rate_schedules():
    cfg = TrainConfig(arch="resnet18", out="x", epochs=200)
    assert [lr_factor(cfg, e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = TrainConfig(arch="resnet18", out="x", epochs=10, schedule="cosine")
    assert lr_factor(cfg, 0) == 1 and lr_factor(cfg, 5) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("method", ["pgd-at", "trades", "mart", "fgsm-rs"])  # others: test_methods
def test_every_method_runs_an_epoch(tmp_path, method):
    result = run(tiny_config(tmp_path, method=method, epochs=1), log=lambda s: None)
    assert result.epochs_done == 1 and math.isfinite(result.history[0]["train"]["loss"])
    assert {"config.json", "last.pt", "best.pt", "metrics.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()}


def test_cell_network_with_auxiliary_head_and_drop_path(tmp_path, arch_file):
    cfg = tiny_config(tmp_path, arch=arch_file, channels=4, drop_path=0.2, epochs=2,
                      batch_size=16, synthetic={**SYNTH, "n_train": 48})
    result = run(cfg, log=lambda s: None)
    assert "aux_ce" in result.history[0]["train"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_spec"]["architecture"]["macro"]["num_classes"] == 4


def test_resume_is_exact(tmp_path):
    straight = run(tiny_config(tmp_path / "a", epochs=3), log=lambda s: None)
    cfg = tiny_config(tmp_path / "b", epochs=3)
    run(cfg, max_epochs=1, log=lambda s: None)
    resumed = run(cfg, log=lambda s: None)
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert resumed.epochs_done == straight.epochs_done == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history]


def test_resume_needs_no_architecture_file(tmp_path, arch_file):
    cfg = tiny_config(tmp_path, arch=arch_file, channels=4, batch_size=16,
                      synthetic={**SYNTH, "n_train": 48})
    run(cfg, max_epochs=1, log=lambda s: None)
    Path(arch_file).unlink()  # the checkpoint holds the whole architecture
    assert run(cfg, log=lambda s: None).epochs_done == 2


def test_best_checkpoint_is_chosen_on_validation(tmp_path):
    result = run(tiny_config(tmp_path, epochs=3), log=lambda s: None)
    robust = [r["val_robust"] for r in result.history]
    assert result.best_epoch == robust.index(max(robust)) + 1
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == result.best_epoch and "optimizer" not in best
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best"]["epoch"] == result.best_epoch


def test_a_crash_between_last_and_best_is_repaired_on_resume(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    run(cfg, log=lambda s: None)
    (tmp_path / "run" / "best.pt").unlink()  # died after last.pt, before best.pt and metrics
    (tmp_path / "run" / "metrics.json").unlink()
    run(cfg, log=lambda s: None)
    last, best = (load_checkpoint(tmp_path / "run" / n) for n in ("last.pt", "best.pt"))
    assert best["epoch"] == last["best"]["epoch"] == 1
    assert all(torch.equal(v, last["model"][k]) for k, v in best["model"].items())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]["epoch"] == 1


def test_validation_split_is_held_out_of_training(tmp_path):
    fit, val, test, _ = train_loop.load_data(tiny_config(tmp_path).resolved())
    assert len(fit) + len(val) == SYNTH["n_train"] and len(val) == 16
    rows = {tuple(r.flatten().tolist()) for r in fit.images}
    assert not any(tuple(r.flatten().tolist()) in rows for r in val.images)


def test_fgsm_rs_guard_stops_on_catastrophic_overfitting(tmp_path, monkeypatch):
    accuracies = iter([0.30, 0.40, 0.05, 0.5])  # collapse after epoch 2

    def fake_validate(model, loader, cfg):
        return {"val_clean": 0.5, "val_robust": next(accuracies)}

    monkeypatch.setattr(train_loop, "validate", fake_validate)
    logs = []
    cfg = tiny_config(tmp_path, method="fgsm-rs", epochs=4)
    result = run(cfg, log=logs.append)
    assert result.stopped_early and result.epochs_done == 3 and result.best_epoch == 2
    assert any("catastrophic overfitting" in line for line in logs)
    assert run(cfg, log=logs.append).epochs_done == 3  # a stopped run stays stopped


# ----------------------------------------------------------------------------- bad input

def test_unknown_method(tmp_path):
    with pytest.raises(DsaraError, match="unknown training method 'pgd'; methods: pgd-at, trades"):
        run(tiny_config(tmp_path, method="pgd"))


def test_missing_and_corrupt_architecture_files(tmp_path):
    with pytest.raises(DsaraError, match=r"architecture file .*nope.json does not exist"):
        run(tiny_config(tmp_path, arch=str(tmp_path / "nope.json")))
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "dsara.architecture", "schema_')
    with pytest.raises(DsaraError, match="not valid JSON.*truncated or corrupt"):
        run(tiny_config(tmp_path, arch=str(bad)))


def test_unknown_architecture_name_lists_cells_and_baselines(tmp_path):
    with pytest.raises(DsaraError, match="unknown built-in cell 'NASNET'.*baselines: resnet18"):
        run(tiny_config(tmp_path, arch="NASNET"))


def test_eps_as_fraction_and_as_decimal():
    a = config_from_dict({"arch": "resnet18", "out": "x", "eps": "8/255", "step_size": "2/255"})
    b = config_from_dict({"arch": "resnet18", "out": "x", "eps": "0.031"})
    assert a.eps == pytest.approx(8 / 255) and a.step_size == pytest.approx(2 / 255)
    assert b.eps == pytest.approx(0.031)
    with pytest.raises(DsaraError, match="eps 'eight' is not a number"):
        config_from_dict({"arch": "resnet18", "out": "x", "eps": "eight"})
    with pytest.raises(DsaraError, match="unknown key 'epoch'"):
        config_from_dict({"arch": "resnet18", "out": "x", "epoch": 3})


@pytest.mark.parametrize("key,value,message", [
    ("epochs", "10", "epochs must be int"), ("steps", 1.5, "steps must be int"),
    ("milestones", "half", "milestones 'half' must be comma-separated"),
    ("synthetic", {"n_trian": 8}, "unexpected keyword argument 'n_trian'"),
    ("momentum", -0.9, "must be >= 0")])
def test_values_of_the_wrong_type_or_range_are_one_line(key, value, message):
    with pytest.raises(DsaraError, match=message):
        config_from_dict({"arch": "resnet18", "out": "x", key: value}).resolved()


@pytest.mark.parametrize("method, resumes", [("pgd-at", True), ("trades", False)])
def test_a_run_from_before_the_attack_settings(tmp_path, method, resumes):
    """A config saved before craft_mode / attack_start existed resumes when those settings did not
    change its attack (pgd-at: train mode, uniform start), and is refused where they did (trades
    now starts at x + 0.001 N(0, 1))."""
    cfg = tiny_config(tmp_path, method=method, epochs=2)
    run(cfg, max_epochs=1, log=lambda s: None)
    path = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(path)
    for key in ("recipe", "craft_mode", "attack_start", "start_std", "aux_input", "cutout",
                "crop_pad"):
        del ckpt["config"][key]
    torch.save(ckpt, path)
    if resumes:
        assert run(cfg, log=lambda s: None).epochs_done == 2
    else:
        with pytest.raises(DsaraError, match=r"differs in: attack_start\)"):
            run(cfg, log=lambda s: None)


def test_resume_with_another_architecture_or_config_is_refused(tmp_path):
    run(tiny_config(tmp_path, epochs=1), log=lambda s: None)
    with pytest.raises(DsaraError, match="holds a run of architecture 'resnet_tiny', not 'wrn_tiny'"):
        run(tiny_config(tmp_path, arch="wrn_tiny", epochs=1))
    with pytest.raises(DsaraError, match=r"another config \(differs in: lr\)"):
        run(tiny_config(tmp_path, epochs=1, lr=0.05))
