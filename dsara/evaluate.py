"""Robustness evaluation a reviewer accepts, and the sanity checks that catch a broken one.

The model is evaluated in eval mode (a model left in train mode is switched, with a warning) and in
fp32 with TF32 off (the previous setting is restored afterwards), on the whole test split unless
told otherwise. Every adversarial batch of every attack is checked to lie in its eps-ball and in
[0, 1] (`dsara.attacks.check_adversarial`); an attack that leaves them stops the evaluation. A sample counts as robust only if it is
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
                iterations on input Hessian-vector products (`dsara.krylov`), random start

Attacks that need more than the model are built by `dsara.suite.Suite` and passed to `evaluate` as
`attack_fns` (the registry holds placeholders that say what they need):

    transfer-mifgsm, transfer-pgd   crafted on surrogate models (`dsara.transfer`)
    ai-gan             [recon] a generator trained against the model (`dsara.aigan`)
    squeeze-adaptive   [recon] PGD against the model and the feature-squeezing detector jointly

`sanity_checks` runs the checks of Carlini et al., "On Evaluating Adversarial Robustness" (2019):
eps = 0 gives clean accuracy (attacked with a non-zero step, so that a PGD without its projection
fails it), accuracy does not rise with eps or with steps, a large eps drives it to about zero, and
multi-step PGD is not weaker than FGSM.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_adversarial, fgsm, pgd
from .data import ImageSet, Loader
from .device import fp32_math, resolve_device
from .errors import DsaraError
from .krylov import KrylovConfig, so_krylov
from .progress import Pace, bar

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, torch.Generator],
                    torch.Tensor]
INSTALL_AUTOATTACK = 'pip install pyautoattack (or pip install "dsara[autoattack]")'


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin, summed over the batch: max_{j != y} z_j - z_y (ascent target)."""
    z = logits.float()
    correct = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return (other - correct).sum()


def _clean(model, x, y, eps, gen):
    return x


def _fgsm(model, x, y, eps, gen):
    return fgsm(model, x, y, eps, random_start=False)


def _pgd(model, x, y, eps, gen, steps: int, loss_fn=None):
    return pgd(model, x, y, eps, eps / 4, steps, loss_fn=loss_fn, generator=gen)


def _so_krylov(model, x, y, eps, gen, config: KrylovConfig = KrylovConfig()):
    return so_krylov(model, x, y, eps, config, generator=gen)


def _needs(name: str, what: str) -> AttackFn:
    def attack(model, x, y, eps, gen):
        raise DsaraError(f"the {name} attack needs {what}")
    return attack


def _import_autoattack():
    """(AutoAttack class, True if it is the `pyautoattack` package API)."""
    try:
        from pyautoattack import AutoAttack

        return AutoAttack, True
    except ImportError:
        pass
    try:
        from autoattack import AutoAttack  # the authors' git repository, older API

        return AutoAttack, False
    except ImportError:
        raise DsaraError(f"the autoattack attack needs the AutoAttack library: "
                         f"{INSTALL_AUTOATTACK}") from None


AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "custom")


@dataclass(frozen=True)
class AutoAttackConfig:
    version: str = "standard"  # standard | plus | rand | custom (the authors' versions)
    attacks: tuple[str, ...] = ()  # custom only: e.g. ("apgd-ce", "apgd-t")

    def validate(self) -> None:
        if self.version not in AUTOATTACK_VERSIONS:
            raise DsaraError(f"unknown AutoAttack version {self.version!r}; versions: "
                             f"{', '.join(AUTOATTACK_VERSIONS)}")
        if bool(self.attacks) != (self.version == "custom"):
            raise DsaraError("AutoAttack takes a list of attacks exactly when version = custom")


def _autoattack(model, x, y, eps, gen, config: AutoAttackConfig = AutoAttackConfig()):
    config.validate()
    cls, packaged = _import_autoattack()
    kw = {} if packaged else {"verbose": False}
    if config.attacks:
        kw[("attacks" if packaged else "attacks_to_run")] = list(config.attacks)
    adversary = cls(model, norm="Linf", eps=eps, version=config.version, device=x.device, seed=0,
                    **kw)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    # standard AutoAttack targets the 9 runner-up classes (all of them on CIFAR-10); with fewer
    # classes it targets all there are instead of failing
    for attack in (adversary.apgd_targeted, adversary.fab):
        attack.n_target_classes = min(attack.n_target_classes, num_classes - 1)
    if packaged:
        return adversary.run_standard_evaluation(x, y, batch_size=len(x))[0]
    return adversary.run_standard_evaluation(x, y, bs=len(x))


ATTACKS: dict[str, AttackFn] = {
    "clean": _clean,
    "fgsm": _fgsm,
    "pgd20": partial(_pgd, steps=20),
    "pgd100": partial(_pgd, steps=100),
    "cw": partial(_pgd, steps=30, loss_fn=cw_margin),
    "autoattack": _autoattack,
    "so-krylov": _so_krylov,
    "transfer-mifgsm": _needs("transfer-mifgsm", "surrogate models: --surrogate RUN_DIR[,...]"),
    "transfer-pgd": _needs("transfer-pgd", "surrogate models: --surrogate RUN_DIR[,...]"),
    "ai-gan": _needs("ai-gan", "a generator trained against the model (dsara.suite.Suite)"),
    "squeeze-adaptive": _needs("squeeze-adaptive", "the squeeze detector: --detect squeeze"),
}


def parse_attacks(text: str | Sequence[str]) -> list[str]:
    """``"clean,pgd20"`` -> ``["clean", "pgd20"]``; unknown names fail with the known ones."""
    names = [a.strip().lower() for a in (text.split(",") if isinstance(text, str) else text)]
    names = [a for a in dict.fromkeys(names) if a]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise DsaraError(f"unknown attack {(unknown or [''])[0]!r}; attacks: {', '.join(ATTACKS)}")
    if "autoattack" in names:
        _import_autoattack()  # fail before hours of other attacks, not after
    return names


NCHW_ONLY = {"autoattack"}  # attacks whose library needs contiguous NCHW inputs and gradients


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


# ----------------------------------------------------------------------------- evaluation

@dataclass
class EvalReport:
    eps: float  # L-inf radius in [0, 1] pixel units
    n: int  # test images evaluated
    accuracy: dict[str, float]  # attack -> accuracy (0..1)
    worst_case: float  # fraction correct under every attack asked for
    seconds: dict[str, float] = field(default_factory=dict)  # attack -> wall time
    meta: dict[str, Any] = field(default_factory=dict)  # model, checkpoint, dataset, device
    details: dict[str, Any] = field(default_factory=dict)  # dsara.suite: surrogates, detection
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
    replaces registry entries by name (attacks built for this evaluation: dsara.suite).
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
            attack = (attack_fns or {}).get(name) or ATTACKS[name]
            t0 = time.perf_counter()
            pace = Pace(f"evaluate {name} ({i + 1}/{len(names)} attacks)", len(loader),
                        unit="batch")  # lines where no bar is drawn
            # AutoAttack's code .view()s input gradients: it sees the standard layout
            plain = channels_last and name in NCHW_ONLY
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


# ----------------------------------------------------------------------------- sanity checks

@dataclass
class SanityResult:
    name: str
    passed: bool
    detail: str
    # the check's accuracies as a curve, for pictures: {"eps" or "steps": [...], "accuracy":
    # [...], "attack": "..."}; None for single-number checks
    curve: dict[str, Any] | None = None


def _accuracy(model, x, y, attack: Callable, batch_size: int, seed: int) -> float:
    gen = torch.Generator(x.device).manual_seed(seed)
    hits = [_correct_under(model, attack, x[i:i + batch_size], y[i:i + batch_size], None, gen)
            for i in range(0, len(x), batch_size)]
    return torch.cat(hits).float().mean().item()


def _pgd_at(eps: float, steps: int, step_size: float):
    return lambda m, x, y, _eps, gen: pgd(m, x, y, eps, step_size, steps, generator=gen)


def _largest_rise(seq: Sequence[float]) -> float:
    return max((b - a for a, b in zip(seq[:-1], seq[1:], strict=True)), default=0.0)


def _pct(values) -> str:
    return ", ".join(f"{100 * v:.1f}%" for v in values)


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  batch_size: int = 256, seed: int = 0, large_eps: float = 1.0,
                  near_zero: float = 0.05) -> list[SanityResult]:
    """Run the evaluation sanity checks on images `x` (in [0, 1]) and labels `y`.

    Random starts make accuracies noisy by a sample or two, so "does not rise" allows a rise of
    max(1 point, 2 samples). "About zero" means at most `near_zero` at eps = `large_eps` (1.0 lets
    the attacker reach any image).
    """
    model = prepare_for_eval(model)
    with fp32_math():
        return _sanity(model, x, y, eps, batch_size, seed, large_eps, near_zero)


def _sanity(model, x, y, eps, batch_size, seed, large_eps, near_zero) -> list[SanityResult]:
    tol = max(0.01, 2 / len(x))
    acc = partial(_accuracy, model, x, y, batch_size=batch_size, seed=seed)
    clean = acc(_clean)
    # a non-zero step at eps 0: only the projection keeps x_adv = x, and this check tests it
    probe = eps / 4 or 2 / 255
    at_zero = acc(_pgd_at(0.0, 20, probe))
    eps_grid = [0.0, eps / 4, eps / 2, eps, 2 * eps]
    by_eps = [acc(_pgd_at(e, 20, e / 4 or probe)) for e in eps_grid]
    step_grid = [1, 5, 20]
    by_steps = [acc(_pgd_at(eps, s, max(eps / 4, 2.5 * eps / s))) for s in step_grid]
    large = acc(_pgd_at(large_eps, 20, large_eps / 8))
    fgsm_acc = acc(lambda m, x_, y_, _eps, gen: _fgsm(m, x_, y_, eps, gen))
    pgd_acc = by_eps[3]
    return [
        SanityResult("eps=0 gives clean accuracy", at_zero == clean,
                     f"clean {100 * clean:.2f}%, PGD-20 (step eps/4) at eps 0 "
                     f"{100 * at_zero:.2f}%"),
        SanityResult("accuracy does not rise with eps", _largest_rise(by_eps) <= tol,
                     f"PGD-20 at eps x(0, 1/4, 1/2, 1, 2): {_pct(by_eps)}",
                     {"eps": eps_grid, "accuracy": by_eps, "attack": "PGD-20, step eps/4",
                      "clean": clean}),
        SanityResult("accuracy does not rise with steps", _largest_rise(by_steps) <= tol,
                     f"PGD at 1, 5, 20 steps: {_pct(by_steps)}",
                     {"steps": step_grid, "accuracy": by_steps, "eps": eps,
                      "attack": "PGD, step max(eps/4, 2.5 eps/steps)", "clean": clean}),
        SanityResult("large eps drives accuracy to about zero", large <= near_zero,
                     f"PGD-20 at eps {large_eps:g}: {100 * large:.2f}% "
                     f"(pass: <= {100 * near_zero:.0f}%)"),
        SanityResult("multi-step PGD is not weaker than FGSM", pgd_acc <= fgsm_acc + tol,
                     f"FGSM {100 * fgsm_acc:.2f}%, PGD-20 {100 * pgd_acc:.2f}%"),
    ]


def sanity_table(results: Sequence[SanityResult]) -> str:
    return "\n".join(f"{'PASS' if r.passed else 'FAIL'}  {r.name:<42} {r.detail}"
                     for r in results)


# ----------------------------------------------------------------------------- loading

def checkpoint_path(target: str | Path) -> Path:
    """A run directory's best.pt (else last.pt), or the checkpoint file itself."""
    p = Path(target)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise DsaraError(f"{p} holds no best.pt or last.pt; is it a `dsara train` run directory "
                         "that finished an epoch?")
    if not p.exists():
        raise DsaraError(f"{p} does not exist; give a run directory or a checkpoint file")
    return p


def load_trained(target: str | Path, arch: str | None = None) -> tuple[nn.Module, dict, Path]:
    """(model, checkpoint dict, checkpoint path) for a run directory or checkpoint; with `arch`,
    a checkpoint of another architecture is refused and its owner named."""
    from .train.checkpoint import load_checkpoint, load_model, model_spec

    path = checkpoint_path(target)
    ckpt = load_checkpoint(path)
    expected = None
    if arch is not None:
        spec = ckpt.get("model_spec") or {}
        stats = spec.get("architecture", {}).get("macro", spec)
        expected = model_spec(arch, _num_classes(spec), stats.get("mean"), stats.get("std"))
    model = load_model(ckpt, f"checkpoint {path}", expected).eval()
    return model, ckpt, path


def _num_classes(spec: dict[str, Any]) -> int:
    if spec.get("kind") == "baseline":
        return int(spec["num_classes"])
    return int(spec.get("architecture", {}).get("macro", {}).get("num_classes", 10))
