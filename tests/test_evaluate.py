"""Evaluation: worst case per sample, eval mode, the sanity checks, checkpoints and the CLI."""

import json
import sys

import pytest
import torch
from _shared import TINY_GENOTYPE
from torch import nn

from dsara.archfile import from_genotype_text, save_architecture
from dsara.cli import main
from dsara.data import ImageSet, SyntheticConfig, load_dataset
from dsara.errors import DsaraError
from dsara.evaluate import ATTACKS, cw_margin, evaluate, load_trained, parse_attacks, sanity_checks
from dsara.train import TrainConfig, run

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
    monkeypatch.setitem(ATTACKS, "first_half", flip([0, 1, 2, 3]))
    monkeypatch.setitem(ATTACKS, "middle", flip([2, 3, 4, 5]))
    report = evaluate(PixelVote().eval(), data, ["clean", "first_half", "middle"], 0.1)
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


def test_sanity_checks_can_fail(test_set):
    x, y = images(test_set)
    results = {r.name: r for r in sanity_checks(Constant().eval(), x, y, 8 / 255)}
    assert not results["large eps drives accuracy to about zero"].passed


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


@pytest.mark.slow
def test_autoattack_through_the_authors_library(run_dir, test_set):
    pytest.importorskip("pyautoattack", reason="optional extra: pip install pyautoattack")
    model, _, _ = load_trained(run_dir)
    report = evaluate(model, test_set.subset(torch.arange(16)), ["clean", "autoattack"], 8 / 255)
    assert report.accuracy["autoattack"] <= report.accuracy["clean"]


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

