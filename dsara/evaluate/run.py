"""Robustness evaluation a reviewer accepts, and the sanity checks that catch a broken one.

The model is evaluated in eval mode (a model left in train mode is switched, with a warning) and in
fp32 with TF32 off (the previous setting is restored afterwards), on the whole test split unless
told otherwise. Every adversarial batch of every attack is checked to lie in its eps-ball and in
[0, 1] (`dsara.attacks.base.check_adversarial`); an attack that leaves them stops the evaluation. A sample counts as robust only if it is
classified correctly under every attack asked for (worst case per sample). All attacks are L-inf in
[0, 1] pixel space:

    clean       no attack
    fgsm        one signed step of eps, no random start (Goodfellow et al., 2015)
    pgd20       PGD, 20 steps of eps/4, uniform random start (Madry et al., 2018)
    pgd100      PGD, 100 steps of eps/4, uniform random start
    cw          CW-L-inf: PGD on the Carlini-Wagner margin loss, 30 steps of eps/4, random start
    autoattack  standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein, 2020) through
                the authors' library, the optional extra ``pip install pyautoattack``
                (`AutoAttackConfig` selects another version or a custom list of its attacks)
    so-krylov   [recon] second-order attack: 10 steps of eps/4 along sign(d), d from 5 CG
                iterations on input Hessian-vector products (`dsara.attacks.krylov`), random start

Attacks that need more than the model are built by `dsara.evaluate.suite.Suite` and passed to `evaluate` as
`attack_fns` (the registry holds placeholders that say what they need):

    transfer-mifgsm, transfer-pgd   crafted on surrogate models (`dsara.attacks.transfer`)
    ai-gan             [recon] a generator trained against the model (`dsara.attacks.aigan`)
    squeeze-adaptive   [recon] PGD against the model and the feature-squeezing detector jointly

`sanity_checks` runs the checks of Carlini et al., "On Evaluating Adversarial Robustness" (2019):
eps = 0 gives clean accuracy (attacked with a non-zero step, so that a PGD without its projection
fails it), accuracy does not rise with eps or with steps, a large eps drives it to about zero, and
multi-step PGD is not weaker than FGSM.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks.base import check_adversarial
from ..attacks.registry import ATTACKS, AttackFn, attack_fn, parse_attacks
from ..data.datasets import ImageSet
from ..data.loader import Loader
from ..utils.device import fp32_math, resolve_device
from ..utils.progress import Pace, bar


class _ToChannelsLast(torch.autograd.Function):
    """x -> channels_last copy; the gradient goes back contiguous NCHW (as the caller's x)."""

    @staticmethod
    def forward(ctx, x):
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class NCHWFacade(nn.Module):
    """A channels_last model seen as an NCHW one: the attack passes and receives standard-layout
    tensors (AutoAttack .view()s its gradients), the model computes in the fast layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ToChannelsLast.apply(x))


def prepare_for_eval(model: nn.Module) -> nn.Module:
    """Eval mode and fp32; a model left in train mode is switched with a warning."""
    if model.training:
        warnings.warn("the model was in train mode; switched to eval mode for evaluation "
                      "(BatchNorm running statistics, no drop-path)", stacklevel=2)
    return model.eval().float()


@dataclass
class EvalReport:
    eps: float  # L-inf radius in [0, 1] pixel units
    n: int  # test images evaluated
    accuracy: dict[str, float]  # attack -> accuracy (0..1)
    worst_case: float  # fraction correct under every attack asked for
    seconds: dict[str, float] = field(default_factory=dict)  # attack -> wall time
    meta: dict[str, Any] = field(default_factory=dict)  # model, checkpoint, dataset, device
    details: dict[str, Any] = field(default_factory=dict)  # dsara.evaluate.suite: surrogates, detection
    # attack -> one character per image, "1" = still correct: for paired comparisons (bootstrap
    # over test images) and worst cases across evaluations
    per_sample: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mode": "eval", "dtype": "float32"}

    def table(self) -> str:
        head = (f"eps = {self.eps:.5f} ({self.eps * 255:.2f}/255), n = {self.n}, eval mode, fp32")
        rows = [f"{'attack':<17} {'accuracy':>9} {'time':>9}"]
        rows += [f"{name:<17} {100 * acc:>8.2f}% {self.seconds.get(name, 0):>8.1f}s"
                 for name, acc in self.accuracy.items()]
        rows.append(f"{'worst case':<17} {100 * self.worst_case:>8.2f}%")
        return "\n".join([head, *rows])


def _correct_under(model, attack: AttackFn, x, y, eps, gen, name: str | None = None
                   ) -> torch.Tensor:
    """Per sample: still correct under `attack`; with `name`, the batch is checked to lie in the
    eps-ball and [0, 1] first."""
    x_adv = attack(model, x, y, eps, gen)
    if name is not None:
        check_adversarial(x, x_adv, eps, name)
    with torch.no_grad():
        return model(x_adv.float()).argmax(1) == y


def evaluate(model: nn.Module, data: ImageSet, attacks: Sequence[str], eps: float, *,
             batch_size: int = 256, device: str | torch.device = "cpu", seed: int = 0,
             meta: dict[str, Any] | None = None,
             attack_fns: dict[str, AttackFn] | None = None,
             channels_last: bool = False) -> EvalReport:
    """Accuracy under each attack and worst case per sample, over all of `data`; `attack_fns`
    replaces registry entries by name (attacks built for this evaluation: dsara.evaluate.suite).
    `channels_last` runs model and batches in that memory format (the same numbers up to float
    rounding; 1.5x faster for cell networks on a CPU, docs/speed.md)."""
    names = parse_attacks(list(attacks))
    device = resolve_device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = prepare_for_eval(model).to(device, memory_format=layout)
    loader = Loader(data, min(batch_size, len(data)), shuffle=False, drop_last=False,
                    device=device, channels_last=channels_last)
    correct = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    with fp32_math():
        for i, name in enumerate(names):
            gen = torch.Generator(loader.device).manual_seed(seed + i)
            attack = (attack_fns or {}).get(name) or attack_fn(name)
            t0 = time.perf_counter()
            pace = Pace(f"evaluate {name} ({i + 1}/{len(names)} attacks)", len(loader),
                        unit="batch")  # lines where no bar is drawn
            # AutoAttack's code .view()s input gradients: it sees the standard layout
            plain = channels_last and ATTACKS[name].nchw_only
            seen = NCHWFacade(model) if plain else model
            for x, y in bar(loader.epoch(0), total=len(loader), desc=name, unit="batch"):
                x = x.contiguous() if plain else x
                correct[name].append(_correct_under(seen, attack, x, y, eps, gen, name))
                pace.update()
            seconds[name] = time.perf_counter() - t0
    per_sample = {k: torch.cat(v) for k, v in correct.items()}
    worst = torch.stack(list(per_sample.values())).all(0)
    n = len(data)
    return EvalReport(eps, n, {k: v.sum().item() / n for k, v in per_sample.items()},
                      worst.sum().item() / n, seconds, dict(meta or {}, device=str(device)),
                      per_sample={k: bits(v) for k, v in per_sample.items()})


def bits(correct: torch.Tensor) -> str:
    """A boolean vector as a string of 0/1 characters (compact in JSON)."""
    return "".join("1" if c else "0" for c in correct.tolist())
