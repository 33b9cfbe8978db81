"""Named retraining recipes: every recipe is complete and resolves, `arnas` is the authors' recipe
exactly, flags override single fields, config.json records the recipe, Cutout."""

import json

import pytest
import torch

from dsara.cli import build_parser, main
from dsara.commands.train import build_config
from dsara.data.datasets import ImageSet
from dsara.data.loader import Loader, cutout_batch
from dsara.errors import DsaraError
from dsara.train import TrainConfig
from dsara.train.config import config_from_dict
from dsara.train.loop import lr_factor
from dsara.train.methods import METHODS
from dsara.train.recipes import CELL_ONLY, RECIPES, TRAINING_FIELDS

SYNTH = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16",
         "--synthetic-size", "8", "--synthetic-classes", "4"]


def resolved(recipe, arch="ARNAS", **kw):
    return config_from_dict({"arch": arch, "out": "x", "recipe": recipe, **kw}).resolved()


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_complete_and_resolves(name):
    recipe = RECIPES[name]
    assert set(recipe.settings) == set(TRAINING_FIELDS), name
    assert recipe.settings["method"] in METHODS and recipe.source and recipe.reproduces
    cell, baseline = resolved(name), resolved(name, arch="resnet18")
    for key in TRAINING_FIELDS:
        expected = recipe.settings[key]
        assert getattr(cell, key) == (tuple(expected) if key == "milestones" else expected), key
        if key not in CELL_ONLY:
            assert getattr(baseline, key) == getattr(cell, key), key
    assert cell.recipe == name and all(getattr(baseline, k) is None for k in CELL_ONLY)


def test_the_training_fields_are_train_config_fields():
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(TRAINING_FIELDS) <= fields and {"recipe", "cutout", "craft_mode"} <= fields


# The authors' values, read from their code independently of recipes.py (file: line of each value;
# for a per-epoch schedule, the 0-based epochs at which the lr factor changes and the factors).
AUTHORS = {
    "arnas": {  # fyqsama/ARNAS 9bcc2e3, ARNAS_train_eval/advrush/ + README.md
        "method": "pgd-at",  # adv_train.py:35 adv_loss pgd -> madry_loss
        "epochs": 200, "batch_size": 32,  # adv_train.py:30; README's command --batch_size 32
        "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,  # adv_train.py:25-27
        "drops": {99: 0.1, 149: 0.01},  # adv_train.py:206-212 (epoch >= 99, >= 149)
        "grad_clip": 5.0, "eps": 8 / 255, "steps": 7, "step_size": 0.01,  # :47, :31, :32, :33
        "craft_mode": "eval", "attack_start": "normal", "start_std": 0.001,  # trades.py:28, :31
        "aux_input": "clean", "auxiliary_weight": 0.4,  # adv_train.py:141, :40
        "drop_path": 0.0, "cutout": 16, "crop_pad": 4,  # :43, :42, utils.py:84
        "precision": "fp32"},  # no amp / half anywhere
    "madry": {  # MadryLab/cifar10_challenge f15682d config.json
        "method": "pgd-at", "batch_size": 128, "lr": 0.1, "momentum": 0.9,  # :15, :16, :18
        "weight_decay": 2e-4, "eps": 8 / 255, "steps": 10, "step_size": 2 / 255,  # :17, :26-28
        "attack_start": "uniform", "precision": "fp32"},  # :29 random_start
    "trades": {  # yaodongyu/TRADES 6e8e11b train_trades_cifar10.py
        "method": "trades", "epochs": 76, "batch_size": 128, "lr": 0.1,  # :20, :16, :24
        "momentum": 0.9, "weight_decay": 2e-4, "eps": 0.031, "steps": 10,  # :26, :22, :30, :32
        "step_size": 0.007, "beta": 6.0, "drops": {74: 0.1},  # :34, :36, :137-145 (1-based 75)
        "precision": "fp32"},
    "mart": {  # YisenWang/MART 2d83e17 train_wideresnet.py
        "method": "mart", "epochs": 90, "batch_size": 128, "lr": 0.1,  # :25, :21, :29
        "momentum": 0.9, "weight_decay": 7e-4, "eps": 0.031, "steps": 10,  # :31, :27, :35, :37
        "step_size": 0.007, "beta": 6.0,  # :39, :41
        "drops": {74: 0.1, 89: 0.01},  # :109-117 (1-based epochs 75 and 90)
        "precision": "fp32"},
    "fgsm-rs": {  # locuslab/fast_adversarial 54f7287 CIFAR10/train_fgsm.py
        "method": "fgsm-rs", "epochs": 15, "batch_size": 128, "lr": 0.2, "momentum": 0.9,
        "weight_decay": 5e-4, "eps": 8 / 255, "step_size": 10 / 255, "steps": 1,
        "attack_start": "uniform", "precision": "bf16"},  # :37 apex O2 mixed precision
}


@pytest.mark.parametrize("name", list(AUTHORS))
def test_every_recipe_field_is_its_authors_value(name):
    c = resolved(name)
    for key, value in AUTHORS[name].items():
        if key == "drops":
            continue
        assert getattr(c, key) == pytest.approx(value) if isinstance(value, float) else \
            getattr(c, key) == value, f"{name}.{key}"
    drops = AUTHORS[name].get("drops")
    if drops:
        factors = [lr_factor(c, e) for e in range(c.epochs)]
        changes = {e: f for e, f in enumerate(factors) if e and f != factors[e - 1]}
        assert changes == pytest.approx(drops), name


def test_fgsm_rs_recipe_is_a_triangle_peaking_mid_training():
    c = resolved("fgsm-rs")
    factors = [lr_factor(c, e) for e in range(c.epochs)]
    assert max(factors) == pytest.approx(1) and factors.index(max(factors)) == c.epochs // 2
    assert factors[0] == pytest.approx(factors[-1]) and factors[0] < 0.1
    assert all(b > a for a, b in zip(factors[:7], factors[1:8], strict=True))


def test_flags_override_single_fields():
    args = build_parser().parse_args(["train", "ARNAS", "--out", "x", "--recipe", "arnas",
                                      "--steps", "3", "--cutout", "8"])
    c = build_config(args).resolved()
    assert (c.steps, c.cutout) == (3, 8)
    assert (c.step_size, c.craft_mode, c.epochs, c.batch_size) == (0.01, "eval", 200, 32)


def test_config_json_records_the_recipe_and_every_value(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "resnet_tiny", *SYNTH, "--recipe", "arnas", "--epochs", "1",
                 "--batch-size", "16", "--val-size", "16", "--val-steps", "1",
                 "--cutout", "4", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == "arnas" and saved["epochs"] == 1 and saved["cutout"] == 4
    assert (saved["steps"], saved["step_size"], saved["craft_mode"]) == (7, 0.01, "eval")
    # the same command again resumes (the recipe resolves to the same config)
    assert main(["train", "resnet_tiny", *SYNTH, "--recipe", "arnas", "--epochs", "1",
                 "--batch-size", "16", "--val-size", "16", "--val-steps", "1",
                 "--cutout", "4", "--out", str(out)]) == 0


def test_unknown_recipe_lists_the_known_ones(capsys):
    with pytest.raises(DsaraError, match="unknown recipe 'arnaz'; recipes: arnas, madry, trades"):
        resolved("arnaz")
    assert main(["train", "resnet_tiny", "--recipe", "nope", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsara: error: unknown recipe 'nope'") and "\n" not in err


# ----------------------------------------------------------------------------- Cutout

def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.rand(64, 3, 32, 32) * 0.9 + 0.1
    gen = torch.Generator().manual_seed(0)
    out = cutout_batch(x, 16, gen)
    again = cutout_batch(x, 16, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    for img, orig in zip(out, x, strict=True):
        hole = (img == 0).all(0)
        assert torch.equal(img[:, ~hole], orig[:, ~hole])  # only the hole changes
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # a 16-square, clipped at a border
        assert hole.sum() == len(rows) * len(cols)  # a rectangle, all of it zero
    sides = [(i == 0).all(0).any(1).sum().item() for i in out]
    assert sides.count(16) > 10  # unclipped when the centre is at least 8 px from the border


def test_loader_cutout_keeps_the_crops_of_a_run_without_it():
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(30, 256, (32, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.arange(32) % 4)
    plain = Loader(data, 16, augment=True, seed=3)
    cut = Loader(data, 16, augment=True, seed=3, cutout=4)
    for (a, ya), (b, yb) in zip(plain.epoch(1), cut.epoch(1), strict=True):
        assert torch.equal(ya, yb)
        changed = a != b
        assert changed.any() and (b[changed] == 0).all()
