"""Named retraining recipes: each a complete set of training settings read from its authors' code.

``dsara train ARCH --recipe NAME`` starts from the recipe's settings; a config file, flags and
``--set`` then override single fields, and ``config.json`` records the recipe's name beside every
resolved value. A recipe sets every field of `TRAINING_FIELDS` (a contract test checks each one), so
nothing silently falls back to a dsara default.

One recipe serves every architecture of a comparison: the settings that only exist for cell
networks (`CELL_ONLY`: auxiliary-head weight, drop-path) are left out for a baseline, which has
neither.

Where every recipe deliberately differs from its authors' code (the README says so too):
- attack starts and every attack step are clamped to [0, 1] (the reference code clamps the steps,
  not always the start);
- the checkpoint kept as ``best.pt`` is chosen on a validation split held out of the training set
  (the reference scripts keep the last epoch, or select on the test set);
- the learning rate changes once per epoch, never within one.

To add a recipe (a new method's authors' settings), add an entry to `RECIPES`: the contract tests
in tests/test_recipes.py run over every entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DsaraError

# the TrainConfig fields that make up a training recipe; every recipe sets all of them
TRAINING_FIELDS = (
    "method", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "milestones",
    "grad_clip", "eps", "step_size", "steps", "beta", "craft_mode", "attack_start", "start_std",
    "aux_input", "auxiliary_weight", "drop_path", "cutout", "augment", "crop_pad", "precision")
CELL_ONLY = ("auxiliary_weight", "drop_path")


@dataclass(frozen=True)
class Recipe:
    reproduces: str  # one line: whose training this is
    source: str  # the paper and the code (file, commit) the settings were read from
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields -> values
    differs: str = ""  # where dsara differs from that code beyond the module-level differences


RECIPES: dict[str, Recipe] = {
    "arnas": Recipe(
        reproduces="ARNAS / DSARA retraining of a searched cell network (PGD-AT)",
        source="Ou et al., CVPR 2024 (arXiv 2405.05502); fyqsama/ARNAS (commit 9bcc2e3) "
               "ARNAS_train_eval/advrush/adv_train.py (lines as L<n>), trades.py madry_loss, "
               "utils.py, README.md; on the DARTS train.py skeleton",
        settings=dict(
            method="pgd-at",  # adv_train.py L35 --adv_loss pgd -> madry_loss (L142-150)
            epochs=200,  # L30; README: --epochs 200
            batch_size=32,  # README: --batch_size 32 (L24's default is 2, "#128")
            lr=0.1, momentum=0.9, weight_decay=1e-4,  # L25, L26, L27
            # adjust_learning_rate L206-214 (0-based epochs): x0.1 from epoch 99, x0.01 from 149
            schedule="piecewise", milestones=(99 / 200, 149 / 200),
            grad_clip=5.0,  # L47 (DARTS train.py's default), applied at L166
            eps=8 / 255, step_size=0.01, steps=7,  # L31 8/255, L33, L32
            beta=6.0,  # L34, unused by pgd-at
            # trades.py L28 model.eval() while crafting, L31 start x + 0.001 N(0, 1)
            craft_mode="eval", attack_start="normal", start_std=0.001,
            aux_input="clean", auxiliary_weight=0.4,  # L141 logits_aux of model(input); L39-40
            drop_path=0.0,  # L43
            cutout=16, augment=True, crop_pad=4,  # L41-42; utils.py L84-89 crop 32 pad 4, flip
            precision="fp32"),  # no mixed precision anywhere in the code
        differs="Cutout zeroes raw [0, 1] pixels (ARNAS feeds unnormalized images, so its holes "
                "are black too)"),
    "madry": Recipe(
        reproduces="Madry et al. PGD adversarial training on CIFAR-10",
        source="Madry et al., ICLR 2018; MadryLab/cifar10_challenge config.json and train.py "
               "(commit f15682d)",
        settings=dict(
            method="pgd-at",
            epochs=205,  # 80,000 steps of 128 images = 204.8 epochs of 50,000
            batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4,
            schedule="piecewise", milestones=(0.5, 0.75),  # steps 40,000 and 60,000 of 80,000
            grad_clip=0.0, eps=8 / 255, step_size=2 / 255,
            steps=10,  # config.json (the paper's text says 7)
            beta=6.0, craft_mode="train",  # one graph in mode 'train' crafts and trains
            attack_start="uniform", start_std=0.001, aux_input="adv", auxiliary_weight=0.0,
            drop_path=0.0, cutout=0, augment=True,
            crop_pad=2,  # resize_image_with_crop_or_pad to 36x36, random 32x32 crop, flip
            precision="fp32"),  # TF1 fp32
        differs="weight decay applies to every parameter (the TF code decays conv and fc "
                "weights only, not BatchNorm)"),
    "trades": Recipe(
        reproduces="TRADES on CIFAR-10 (beta = 6)",
        source="Zhang et al., ICML 2019; yaodongyu/TRADES train_trades_cifar10.py and trades.py "
               "(commit 6e8e11b)",
        settings=dict(
            # L16 batch 128, L20 epochs 76, L22 wd 2e-4, L24 lr 0.1, L26 momentum 0.9
            method="trades", epochs=76, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4,
            # adjust_learning_rate L137-145 on 1-based epochs (L155): x0.1 from epoch 75
            # (0-based 74); its drops at 90 and 100 lie past the 76 epochs
            schedule="piecewise", milestones=(74 / 76,),
            grad_clip=0.0, eps=0.031, step_size=0.007, steps=10, beta=6.0,
            craft_mode="eval", attack_start="normal", start_std=0.001, aux_input="adv",
            auxiliary_weight=0.0, drop_path=0.0, cutout=0, augment=True, crop_pad=4,
            precision="fp32")),
    "mart": Recipe(
        reproduces="MART on CIFAR-10 (WideResNet script, beta = 6)",
        source="Wang et al., ICLR 2020; YisenWang/MART train_wideresnet.py and mart.py "
               "(commit 2d83e17)",
        settings=dict(
            # L21 batch 128, L25 epochs 90, L27 wd 7e-4, L29 lr 0.1, L31 momentum 0.9
            method="mart", epochs=90, batch_size=128, lr=0.1, momentum=0.9, weight_decay=7e-4,
            # adjust_learning_rate L109-117 on 1-based epochs (L176): x0.1 from epoch 75,
            # x0.01 from epoch 90 (the last); 0-based: 74 and 89
            schedule="piecewise", milestones=(74 / 90, 89 / 90),
            grad_clip=0.0, eps=0.031, step_size=0.007, steps=10, beta=6.0,  # L35, L39, L37, L41
            craft_mode="eval", attack_start="normal", start_std=0.001, aux_input="adv",
            auxiliary_weight=0.0, drop_path=0.0, cutout=0, augment=True, crop_pad=4,  # L71
            precision="fp32")),
    "fgsm-rs": Recipe(
        reproduces="FGSM with random start ('fast is better than free') on CIFAR-10",
        source="Wong et al., ICLR 2020; locuslab/fast_adversarial CIFAR10/train_fgsm.py "
               "(commit 54f7287)",
        settings=dict(
            method="fgsm-rs", epochs=15, batch_size=128,
            lr=0.2,  # the cyclic schedule's peak (lr-max); it starts and ends at 0
            momentum=0.9, weight_decay=5e-4, schedule="cyclic", milestones=(0.5, 0.75),
            grad_clip=0.0, eps=8 / 255, step_size=10 / 255, steps=1, beta=6.0,
            craft_mode="train", attack_start="uniform", start_std=0.001, aux_input="adv",
            auxiliary_weight=0.0, drop_path=0.0, cutout=0, augment=True, crop_pad=4,
            precision="bf16"),  # train_fgsm.py L37: apex --opt-level O2 (mixed precision)
        differs="bf16 autocast instead of apex O2 fp16 with loss scaling; the triangular learning rate is taken "
                "once per epoch, at the epoch's middle (the authors step it every batch); the "
                "catastrophic-overfitting stop watches PGD on the validation split (the authors: "
                "PGD-5 on the first training batch)"),
    "lowrank-ft": Recipe(
        reproduces="dsara's short robust fine-tune after low-rank compression (CSTAR-style, "
                   "a labelled reconstruction)",
        source="Phan et al., CSTAR, AAAI 2023 (abstract only: ranks chosen globally, then "
               "robust fine-tuning; no code found); PGD 8/255 with 2/255 steps as in "
               "../shared/SEEDS.md; the rest is ours",
        settings=dict(
            method="pgd-at", epochs=5, batch_size=128,
            lr=0.01,  # a tenth of a from-scratch run: the factorised weights start close
            momentum=0.9, weight_decay=5e-4, schedule="cosine", milestones=(0.5, 0.75),
            grad_clip=0.0, eps=8 / 255, step_size=2 / 255, steps=10, beta=6.0,
            craft_mode="eval", attack_start="uniform", start_std=0.001, aux_input="adv",
            auxiliary_weight=0.0, drop_path=0.0, cutout=0, augment=True, crop_pad=4,
            precision="fp32"),
        differs="not an author's recipe: CSTAR's fine-tuning settings are not published"),
}


# The seed papers' methods (dsara/train/methods/, SEEDS.md). Where their authors' schedule could not
# be read, the recipe uses Rice et al.'s PGD-AT schedule for CIFAR-10 (`_RICE`) and says so: those
# recipes are [recon], settings to compare methods under one schedule, not the papers' own runs.
_RICE = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
             schedule="piecewise", milestones=(0.5, 0.75), grad_clip=0.0, eps=8 / 255,
             step_size=2 / 255, steps=10, beta=6.0, craft_mode="train", attack_start="uniform",
             start_std=0.001, aux_input="adv", auxiliary_weight=0.0, drop_path=0.0, cutout=0,
             augment=True, crop_pad=4, precision="fp32")
_SCHEDULE = ("[recon] the training schedule is Rice et al.'s PGD-AT schedule (200 epochs, lr 0.1, "
             "x0.1 at epochs 100 and 150, wd 5e-4): the paper's own was not readable")


def _seed(method: str, reproduces: str, source: str, differs: str = _SCHEDULE, **settings
          ) -> Recipe:
    return Recipe(reproduces=reproduces, source=source,
                  settings={**_RICE, "method": method, **settings}, differs=differs)


RECIPES |= {
    "iat": _seed("iat", "Interpolated AT: PGD-10 of 2/255 at 8/255 on the unmixed batch (eval "
                 "mode), mixup alpha = 1", "Lamb et al., AISec 2019 / Neural Networks 2022; "
                 "settings of a third-party reimplementation (SEEDS.md)", craft_mode="eval"),
    "iat-manifold": _seed("iat-manifold", "Interpolated AT with manifold mixup at a random cell "
                          "or stage boundary", "Lamb et al. (manifold variant); as iat",
                          craft_mode="eval"),
    "mart-ss": Recipe(
        reproduces="MART on labeled + pseudo-labelled batches ([recon] RST-style: half of each "
                   "batch pseudo-labelled by --teacher); needs --unlabeled and --teacher",
        source="Wang et al., ICLR 2020 (the semi-supervised extension: abstract only); MART's "
               "train_wideresnet.py settings; RST (Carmon et al. 2019) for the mixing",
        settings={**RECIPES["mart"].settings, "method": "mart-ss"},
        differs="[recon] pseudo-labelling and the 1:1 batch mix follow RST, not a MART script"),
    "bang": _seed("bang", "BANG: batch-adjusted per-sample gradient scales, no adversarial "
                  "examples ([recon] scaling)", "Rozsa, Günther, Boult, arXiv 1612.00138; the "
                  "README of their Caffe fork", differs=_SCHEDULE + "; [recon] the gradient "
                  "scaling (SEEDS.md) and its constants (method_options)"),
    "jsigr": _seed("jsigr", "J-SIGR: CE + Jacobian norm + input-gradient penalty on unimportant "
                   "pixels ([recon] penalties)", "Liu et al., Pattern Recognition 2024 (arXiv "
                   "2207.13036): abstract only", craft_mode="eval",
                   differs=_SCHEDULE + "; [recon] both penalties and their weights"),
    "so-at": _seed("so-at", "AT on second-order examples: delta = eps sign(d), d from 5 CG "
                   "iterations on the input Hessian ([recon] direction)", "Qian et al., arXiv "
                   "2207.01396 / AMCS 2024: abstract only", craft_mode="eval",
                   attack_start="zero", step_size=8 / 255, steps=1,
                   differs=_SCHEDULE + "; [recon] the Krylov direction (dsara.attacks.krylov)"),
    "ladder": Recipe(
        reproduces="LADDER fine-tuning of --teacher on 1/2 clean + 1/2 latent-boundary images",
        source="Zhou, Tsang, Yin, Machine Learning 2022; the authors' code (SEEDS.md): SGD 0.01",
        settings={**_RICE, "method": "ladder", "epochs": 20, "lr": 0.01, "schedule": "cosine"},
        differs="[recon] the fine-tuning length (20 epochs, cosine), the decoder and the SVM "
                "mini-batches; the authors' generator is a GAN"),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DsaraError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_settings(name: str, arch: str) -> dict[str, Any]:
    """The settings of recipe `name` for architecture `arch` (cell-only settings dropped for a
    baseline)."""
    settings = dict(get_recipe(name).settings)
    if is_baseline(arch):
        for key in CELL_ONLY:
            settings.pop(key, None)
    return settings


def apply_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (config file, flags) on top of the settings of its ``recipe``, if it names one."""
    name = raw.get("recipe")
    if name in (None, ""):
        return dict(raw)
    if not isinstance(name, str):
        raise DsaraError(f"recipe must be a name, got {name!r}; recipes: {', '.join(RECIPES)}")
    return {**recipe_settings(name, str(raw.get("arch", ""))), **raw}


def is_baseline(arch: str) -> bool:
    """True for a baseline name (resnet18, ...) that is not also a file on disk."""
    from ..arch.baselines import baseline_name

    return baseline_name(arch) is not None and not Path(arch).is_file()

