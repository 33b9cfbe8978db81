"""Evaluation: worst case per sample, eval mode, the sanity checks, checkpoints and the CLI."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _shared import TINY_GENOTYPE
from torch import nn

from dsara.arch.archfile import from_genotype_text, save_architecture
from dsara.attacks.autoattack import AutoAttackConfig, _autoattack
from dsara.attacks.base import BrokenAttack, check_adversarial
from dsara.attacks.registry import ATTACKS, Attack, cw_margin, parse_attacks
from dsara.cli import main
from dsara.commands.evaluate import DEFAULT_ATTACKS
from dsara.data.datasets import ImageSet, SyntheticConfig, load_dataset
from dsara.errors import DsaraError
from dsara.evaluate import sanity as sanity_module
from dsara.evaluate.run import evaluate
from dsara.evaluate.sanity import sanity_checks
from dsara.train import TrainConfig, run
from dsara.train.checkpoint import load_trained

SYNTH = {"n_train": 320, "n_test": 64, "image_size": 8, "num_classes": 4}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny ResNet briefly adversarially trained on synthetic 8x8 images."""
    out = tmp_path_factory.mktemp("eval") / "run"
    run(TrainConfig(arch="resnet_tiny", out=str(out), dataset="synthetic", synthetic=SYNTH,
                    epochs=3, batch_size=32, val_size=32, steps=2, val_steps=2),
        log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("synthetic", synthetic=SyntheticConfig(**SYNTH))[1]


def images(data: ImageSet):
    return data.images.float() / 255, data.labels


# ----------------------------------------------------------------------------- attacks, report

def test_cw_margin_hand_computed():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    assert cw_margin(logits, torch.tensor([0, 1])).item() == pytest.approx((3 - 1) + (2 - 3))


class PixelVote(nn.Module):
    """Class 0 if pixel (0, 0, 0) > pixel (0, 0, 1), else class 1: attacks are easy to script."""

    def forward(self, x):
        return x[:, 0, 0, :2].float() * 10


def flip(indices):
    def attack(model, x, y, eps, gen):
        x = x.clone()
        x[indices, 0, 0, :2] = x[indices, 0, 0, :2].flip(-1)
        return x
    return attack


def test_worst_case_is_per_sample(monkeypatch):
    img = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    img[:, 0, 0, 0] = 200  # every sample is class 0, classified correctly when clean
    data = ImageSet(img, torch.zeros(8, dtype=torch.int64))
    monkeypatch.setitem(ATTACKS, "first_half", Attack("first_half", flip([0, 1, 2, 3])))
    monkeypatch.setitem(ATTACKS, "middle", Attack("middle", flip([2, 3, 4, 5])))
    # the scripted attacks swap two pixels: inside an eps-ball of 1
    report = evaluate(PixelVote().eval(), data, ["clean", "first_half", "middle"], 1.0)
    assert report.accuracy == {"clean": 1.0, "first_half": 0.5, "middle": 0.5}
    assert report.worst_case == 0.25  # only samples 6 and 7 survive both attacks


def test_report_on_a_trained_model(run_dir, test_set):
    model, _, _ = load_trained(run_dir)
    report = evaluate(model, test_set.subset(torch.arange(32)), ["clean", "fgsm", "pgd20"], 8 / 255)
    acc = report.accuracy
    assert acc["pgd20"] <= acc["clean"] and report.worst_case <= min(acc.values())
    d = json.loads(json.dumps(report.to_dict()))
    assert d["mode"] == "eval" and d["dtype"] == "float32" and d["n"] == 32
    assert "worst case" in report.table()


def test_per_image_results_and_channels_last_give_the_same_evaluation(run_dir, test_set):
    model, _, _ = load_trained(run_dir)
    data = test_set.subset(torch.arange(32))
    plain = evaluate(model, data, ["clean", "pgd20"], 8 / 255, seed=3)
    fast = evaluate(model, data, ["clean", "pgd20"], 8 / 255, seed=3, channels_last=True)
    for name in ("clean", "pgd20"):
        bits = plain.per_sample[name]
        assert len(bits) == 32 and set(bits) <= {"0", "1"}
        assert bits.count("1") / 32 == plain.accuracy[name]
    assert fast.per_sample["clean"] == plain.per_sample["clean"]
    differ = sum(a != b for a, b in zip(fast.per_sample["pgd20"], plain.per_sample["pgd20"]))
    assert differ <= 1  # float rounding of another layout may flip one borderline image


def test_an_nchw_only_attack_runs_on_a_channels_last_model_with_standard_layout_gradients(
        run_dir, test_set):
    """AutoAttack .view()s input gradients: under channels_last it sees NCHW tensors while the
    model computes in the fast layout (NCHWFacade); a stand-in that .view()s must work and give
    the plain layout's numbers."""
    model, _, _ = load_trained(run_dir)
    data = test_set.subset(torch.arange(32))
    seen = []

    def viewing_fgsm(m, x, y, eps, gen):
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(m(x), y), x)
        seen.append(grad.is_contiguous())
        step = grad.view(grad.shape[0], -1).sign().view(x.shape)  # fails on a channels_last grad
        return (x + eps * step).clamp(0, 1).detach()

    plain = evaluate(model, data, ["autoattack"], 8 / 255, attack_fns={"autoattack": viewing_fgsm})
    fast = evaluate(model, data, ["autoattack"], 8 / 255, attack_fns={"autoattack": viewing_fgsm},
                    channels_last=True)
    assert seen and all(seen)
    differ = sum(a != b for a, b in zip(fast.per_sample["autoattack"],
                                        plain.per_sample["autoattack"]))
    assert differ <= 1
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last) or \
        all(p.dim() != 4 for p in model.parameters())


def test_a_model_left_in_train_mode_is_switched_with_a_warning(run_dir, test_set):
    model, _, _ = load_trained(run_dir)
    model.train()
    with pytest.warns(UserWarning, match="train mode; switched to eval mode"):
        evaluate(model, test_set.subset(torch.arange(8)), ["clean"], 8 / 255)
    assert not model.training


# ----------------------------------------------------------------------------- sanity checks

def test_sanity_checks_hold_for_a_briefly_trained_model(run_dir, test_set):
    model, _, _ = load_trained(run_dir)
    x, y = images(test_set)
    results = sanity_checks(model, x, y, 8 / 255)
    assert [r.name for r in results] == [
        "eps=0 gives clean accuracy", "accuracy does not rise with eps",
        "accuracy does not rise with steps", "large eps drives accuracy to about zero",
        "multi-step PGD is not weaker than FGSM"]
    assert all(r.passed for r in results), [r for r in results if not r.passed]


class Constant(nn.Module):
    """Always predicts class 0: no attack can move it, so "large eps -> zero" must fail."""

    def forward(self, x):
        return torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(x), 4) + 0 * x.mean((1, 2, 3))[:, None]


class Noisy(nn.Module):
    """A randomized 'defense': random logits at every call, so eps = 0 does not give clean
    accuracy (with a fixed seed the draws, hence the verdict, are reproducible)."""

    def forward(self, x):
        return 10 * torch.randn(len(x), 4) + 0 * x.flatten(1)[:, :4]


class _Flip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Reversed(nn.Module):
    """A random linear classifier whose input gradient is reversed (gradient masking): every
    attack step helps it, so accuracy rises with eps and a large eps drives it up, not to zero."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(_Flip.apply(x).flatten(1))


class Trap(nn.Module):
    """For images at 0.5: correct (class 0 of 2) while the mean |x - 0.5| stays under eps/2; its
    gradient pulls every pixel back toward 0.5 (toward +eps from exactly 0.5). So one large step
    lands on a corner of the ball (wrong) while small steps stay near the centre (right), and FGSM
    from the clean image beats PGD from a random start: accuracy rises with steps, PGD looks
    weaker than FGSM."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        d = x - 0.5
        margin = self.eps / 2 - d.abs().mean((1, 2, 3))  # > 0: correct
        pull = torch.where(d > 0, 1.0, -1.0) * d  # |d|; attack steps on it go toward 0.5
        score = margin.detach() + 1e-3 * (pull.sum((1, 2, 3)) - pull.sum((1, 2, 3)).detach())
        return 100 * torch.stack([score, -score], 1)


def _fails(model, x, y, eps=8 / 255):
    return {r.name for r in sanity_checks(model.eval(), x, y, eps) if not r.passed}


def test_every_sanity_check_can_fail(test_set):
    x, y = images(test_set)
    assert "eps=0 gives clean accuracy" in _fails(Noisy(), x, y)
    assert "large eps drives accuracy to about zero" in _fails(Constant(), x, y)
    reversed_ = _fails(Reversed(), x, y)
    assert {"accuracy does not rise with eps", "large eps drives accuracy to about zero"
            } <= reversed_
    trapped = _fails(Trap(8 / 255), torch.full((32, 3, 8, 8), 0.5), torch.zeros(32).long())
    assert {"accuracy does not rise with steps", "multi-step PGD is not weaker than FGSM"
            } <= trapped
    assert "eps=0 gives clean accuracy" not in trapped | reversed_  # deterministic models pass it


def pgd_without_projection(model, x, y, eps, step_size, steps, random_start=True, loss_fn=None,
                           generator=None, start=None):
    """A mutant of `dsara.attacks.gradient.pgd`: the eps-ball projection is gone, only [0, 1] remains."""
    x_adv = x.detach().float().clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = (loss_fn or F.cross_entropy)(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = (x_adv.detach() + step_size * grad.sign()).clamp(0, 1)
    return x_adv


def test_eps_zero_check_catches_a_pgd_without_projection(run_dir, test_set, monkeypatch):
    model, _, _ = load_trained(run_dir)
    x, y = images(test_set.subset(torch.arange(32)))
    assert "eps=0 gives clean accuracy" not in _fails(model, x, y)
    monkeypatch.setattr(sanity_module, "pgd", pgd_without_projection)
    assert "eps=0 gives clean accuracy" in _fails(model, x, y)


# ----------------------------------------------------------------------------- bounds, fp32

def test_check_adversarial_bounds():
    x = torch.rand(4, 3, 8, 8) * 0.8 + 0.1
    check_adversarial(x, (x + 8 / 255).clamp(0, 1), 8 / 255)  # on the ball's face: fine
    for bad in (x + 9 / 255, (x - 0.1).clamp(min=-1e-3) * 0 - 1e-3 + x * 0, x.clone().fill_(
            float("nan")), x[:2]):
        with pytest.raises(BrokenAttack):
            check_adversarial(x, bad, 8 / 255, "mutant")


@pytest.mark.parametrize("mutant, message", [
    (lambda m, x, y, eps, gen: pgd_without_projection(m, x, y, eps, eps / 4, 20),
     r"attack pgd20 left its bounds: max \|x_adv - x\| = "),
    (lambda m, x, y, eps, gen: x - eps / 2, r"pixels in \[-"),  # inside the ball, below 0
])
def test_evaluate_refuses_an_attack_outside_its_bounds(run_dir, test_set, monkeypatch, mutant,
                                                       message):
    model, _, _ = load_trained(run_dir)
    monkeypatch.setitem(ATTACKS, "pgd20", Attack("pgd20", mutant))
    with pytest.raises(BrokenAttack, match=message):
        evaluate(model, test_set.subset(torch.arange(16)), ["clean", "pgd20"], 8 / 255)


class TF32Spy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.seen = nn.Linear(3 * 8 * 8, 4), set()

    def forward(self, x):
        self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.fc(x.flatten(1))


def test_tf32_is_off_while_evaluating_and_restored_after(test_set):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        spy = TF32Spy().eval()
        evaluate(spy, test_set.subset(torch.arange(8)), ["clean", "fgsm"], 8 / 255)
        x, y = images(test_set.subset(torch.arange(8)))
        sanity_checks(spy, x, y, 8 / 255)
        assert spy.seen == {(False, False)}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_fp32_math_under_the_newer_precision_api():
    """Once fp32_precision was set, PyTorch refuses to read allow_tf32: fp32_math then uses the
    newer flags (in a subprocess, since the switch cannot be undone in this one)."""
    code = ("import torch; from dsara.utils.device import fp32_math; b = torch.backends; "
            "b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = 'tf32'\n"
            "with fp32_math(): inside = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)\n"
            "print(inside, (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "('ieee', 'ieee') ('tf32', 'tf32')"


# ----------------------------------------------------------------------------- bad input

def test_unknown_device_is_one_line(test_set):
    with pytest.raises(DsaraError, match="unknown device 'gpu'"):
        evaluate(PixelVote().eval(), test_set, ["clean"], 0.1, device="gpu")


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(DsaraError, match="unknown attack 'pgd7'; attacks: clean, fgsm, pgd20"):
        parse_attacks("clean,pgd7")


def test_missing_autoattack_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    with pytest.raises(DsaraError, match=r"pip install pyautoattack \(or pip install "
                                         r"\"dsara\[autoattack\]\"\)"):
        parse_attacks("clean,autoattack")


def test_bad_checkpoints(run_dir, tmp_path):
    with pytest.raises(DsaraError, match="does not exist"):
        load_trained(tmp_path / "nope.pt")
    with pytest.raises(DsaraError, match="holds no best.pt or last.pt"):
        load_trained(tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "best.pt").read_bytes()[:500])
    with pytest.raises(DsaraError, match="is corrupt or not a PyTorch file"):
        load_trained(corrupt)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")  # the legacy pickle path raises KeyError, not a torch error
    with pytest.raises(DsaraError, match="is corrupt or not a PyTorch file"):
        load_trained(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DsaraError, match="is not a dsara checkpoint"):
        load_trained(foreign)


def test_checkpoint_of_another_architecture_names_its_owner(run_dir):
    with pytest.raises(DsaraError, match="belongs to baseline resnet_tiny, not to baseline wrn_tiny"):
        load_trained(run_dir, arch="wrn_tiny")
    model, _, _ = load_trained(run_dir, arch="ResNet-Tiny")  # the right one loads
    assert not model.training


def test_cell_checkpoint_of_another_size_names_its_owner(tmp_path):
    arch = save_architecture(from_genotype_text(TINY_GENOTYPE, "tiny"), tmp_path / "cells.json")
    run(TrainConfig(arch=str(arch), out=str(tmp_path / "run"), dataset="synthetic",
                    synthetic={**SYNTH, "n_train": 48}, channels=4, epochs=1, batch_size=16,
                    val_size=16, steps=1, val_steps=1), log=lambda s: None)
    with pytest.raises(DsaraError, match=r"belongs to architecture cells \(4 channels, 5 cells\), "
                                         r"not to architecture cells \(8 channels, 5 cells\)"):
        load_trained(tmp_path / "run", arch=str(arch))
    with pytest.raises(DsaraError, match="belongs to architecture cells .*not to baseline resnet18"):
        load_trained(tmp_path / "run", arch="resnet18")


def test_default_attacks_include_autoattack():
    assert parse_attacks(DEFAULT_ATTACKS) == ["clean", "fgsm", "pgd20", "pgd100", "cw", "autoattack"]


def test_missing_autoattack_is_one_line_before_any_work(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    assert main(["evaluate", "no/such/run"]) == 2  # said before the checkpoint is even looked at
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsara: error: the default attacks include autoattack") and "\n" not in err
    assert "pip install pyautoattack" in err and "--attacks clean,fgsm,pgd20,pgd100,cw" in err


@pytest.fixture(scope="module")
def mlp_and_test():
    """A small MLP trained (clean, full batch) on 8x8 synthetic images: quick to attack."""
    train, test, _ = load_dataset("synthetic", synthetic=SyntheticConfig(**SYNTH))
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.5)
    x, y = images(train)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(mlp(x), y).backward()
        opt.step()
    return mlp.eval(), test.subset(torch.arange(32))


def test_autoattack_is_not_weaker_than_pgd20(mlp_and_test):
    """AutoAttack's two gradient attacks (version custom: APGD-CE and APGD-T; FAB-T and Square
    would take about a minute here) through dsara's wrapper, against PGD-20."""
    pytest.importorskip("pyautoattack", reason="optional extra: pip install pyautoattack")
    mlp, test = mlp_and_test
    aa = partial(_autoattack, config=AutoAttackConfig("custom", ("apgd-ce", "apgd-t")))
    report = evaluate(mlp, test, ["clean", "pgd20", "autoattack"], 24 / 255,
                      attack_fns={"autoattack": aa})
    acc = report.accuracy
    assert 0.1 < acc["pgd20"] < acc["clean"]  # a model that the attacks neither miss nor wipe out
    assert acc["autoattack"] <= acc["pgd20"] + 1 / len(test)


def test_autoattack_config_is_checked():
    with pytest.raises(DsaraError, match="unknown AutoAttack version 'fast'"):
        AutoAttackConfig("fast").validate()
    with pytest.raises(DsaraError, match="exactly when version = custom"):
        AutoAttackConfig("standard", ("apgd-ce",)).validate()


@pytest.mark.slow
def test_standard_autoattack_is_not_weaker_than_pgd20(run_dir, test_set):
    pytest.importorskip("pyautoattack", reason="optional extra: pip install pyautoattack")
    model, _, _ = load_trained(run_dir)
    report = evaluate(model, test_set.subset(torch.arange(16)), ["clean", "pgd20", "autoattack"],
                      8 / 255)
    assert report.accuracy["autoattack"] <= report.accuracy["pgd20"] + 1 / 16


# ----------------------------------------------------------------------------- README example

def test_readme_example_runs(tmp_path, capsys):
    arch = save_architecture(from_genotype_text(TINY_GENOTYPE, "tiny"), tmp_path / "arch.json")
    data = ["--dataset", "synthetic", "--synthetic-train", "96", "--synthetic-test", "32",
            "--synthetic-size", "8", "--synthetic-classes", "4"]
    tiny = ["--epochs", "1", "--batch-size", "16", "--val-size", "16", "--steps", "1",
            "--val-steps", "1"]
    assert main(["train", str(arch), "--channels", "4", *data, *tiny, "--method", "trades",
                 "--out", str(tmp_path / "arch")]) == 0
    assert main(["evaluate", str(tmp_path / "arch"), "--attacks", "clean,fgsm,pgd20",
                 "--eps", "8/255"]) == 0
    assert main(["train", "resnet_tiny", *data, *tiny, "--eps", "0.031",
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--attacks", "clean,pgd20,cw", "--eps", "0.031",
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["eps"] == pytest.approx(0.031) and set(report["accuracy"]) == {"clean", "pgd20",
                                                                                  "cw"}
    assert "worst case" in capsys.readouterr().out


def test_limit_and_sanity_take_recorded_stratified_subsets(run_dir, tmp_path, capsys):
    out = tmp_path / "e.json"
    main(["evaluate", str(run_dir), "--attacks", "clean,fgsm", "--limit", "24", "--sanity",
          "--sanity-n", "12", "--subset-seed", "5", "--json", str(out)])
    report = json.loads(out.read_text())
    subset, sanity = report["subset"], report["sanity_subset"]
    assert report["n"] == 24 and subset["selection"] == "class-stratified"
    assert subset["n"] == 24 and subset["of"] == SYNTH["n_test"] and subset["seed"] == 5
    assert set(subset["per_class"].values()) == {6}  # 4 classes of 16: 6 each
    assert sanity["n"] == 12 and set(sanity["per_class"].values()) == {3}
    assert set(sanity["indices"]) <= set(subset["indices"])  # positions in the whole split
    test = load_dataset("synthetic", synthetic=SyntheticConfig(**SYNTH))[1]
    assert torch.bincount(test.labels[subset["indices"]]).tolist() == [6, 6, 6, 6]
    assert "sanity checks on 12 test images (class-stratified)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet_tiny", "--method", "pgd", "--out", "x"], "unknown training method 'pgd'"),
    (["evaluate", "no/such/run"], "no/such/run does not exist"),
    (["evaluate", "no/such/run", "--attacks", "clean,foo"], "unknown attack 'foo'"),
    (["evaluate", "no/such/run", "--eps", "8//255"], "eps '8//255' is not a number"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("dsara: error: ") and "\n" not in err

