"""The evaluation's attacks that need more than the model: transfer attacks (surrogate models),
AI-GAN (a generator trained against the model and cached in its run directory) and the
feature-squeezing detector with its adaptive attacker; their configs, and their report sections.

`Suite` builds the attack functions `dsara.evaluate.run.evaluate` runs in place of the registry's
placeholders, wraps every attack so the detector sees each adversarial batch, and afterwards
gives the report's `details`: per attack its constants (and what is a reconstruction), the
surrogates, AI-GAN's targeted success and images/s next to PGD-20's, and the detection table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.aigan import AiGanAttack, AiGanConfig, prepare_generator
from ..attacks.gradient import pgd
from ..attacks.krylov import KrylovConfig, so_krylov
from ..attacks.registry import attack_fn
from ..attacks.transfer import TransferConfig, transfer_attack
from ..data.datasets import ImageSet
from ..data.loader import Loader
from ..errors import DsaraError
from ..utils.config import split_override
from .squeeze import (
    SqueezeConfig,
    SqueezeDetector,
    adaptive_attack,
    detection_metrics,
    fit_detector,
)

CONFIGS: dict[str, type] = {"so-krylov": KrylovConfig, "transfer": TransferConfig,
                            "ai-gan": AiGanConfig, "squeeze": SqueezeConfig}
DETECTORS = ("squeeze",)
TRANSFER_KINDS = {"transfer-mifgsm": "mifgsm", "transfer-pgd": "pgd"}
ADAPTIVE = "squeeze-adaptive"
RECONSTRUCTED = ("so-krylov", "ai-gan", ADAPTIVE)
PGD20_TIMING_IMAGES = 256  # test images PGD-20 is timed on for AI-GAN's speed comparison


def parse_attack_sets(items: Iterable[str] | None) -> dict[str, Any]:
    """``["so-krylov.iters=3", "squeeze.bits=4"]`` -> {group: config dataclass}, typed as the
    dataclass's defaults; unknown groups or keys fail with the known ones."""
    out: dict[str, Any] = {name: cls() for name, cls in CONFIGS.items()}
    for item in items or ():
        key, value = split_override(item)
        group, _, name = key.rpartition(".")
        if group not in CONFIGS:
            raise DsaraError(f"--attack-set {item!r}: unknown group {group!r}; groups: "
                             f"{', '.join(CONFIGS)} (write GROUP.KEY=VALUE)")
        fields = {f.name: f for f in dataclasses.fields(CONFIGS[group])}
        if name not in fields:
            raise DsaraError(f"--attack-set {item!r}: {group} has no key {name!r}; keys: "
                             f"{', '.join(fields)}")
        if isinstance(getattr(out[group], name), str):
            value = item.partition("=")[2].strip()  # a word, even one TOML reads as a bool
        out[group] = dataclasses.replace(out[group], **{name: _typed(item, out[group], name,
                                                                     value)})
    for config in out.values():
        config.validate()
    return out


def _typed(item: str, config, name: str, value):
    default = getattr(config, name)
    if isinstance(default, bool) or default is None:
        ok = isinstance(value, bool) or (default is None and isinstance(value, (int, float)))
    elif isinstance(default, float):
        ok, value = isinstance(value, (int, float)) and not isinstance(value, bool), value
        value = float(value) if ok else value
    else:
        ok = type(value) is type(default)
    if not ok:
        raise DsaraError(f"--attack-set {item!r}: {name} must be like {default!r}")
    return value


@dataclass
class SuiteOptions:
    surrogates: Sequence[str] = ()  # run directories or checkpoints of the transfer surrogates
    detect: str | None = None  # "squeeze" or None
    configs: dict[str, Any] = field(default_factory=lambda: parse_attack_sets(None))
    cache_dir: str | Path | None = None  # where AI-GAN's generator is cached (the run directory)


TrainImages = Callable[[], tuple[ImageSet, ImageSet]]  # () -> (fit part, held-out part)


class Suite:
    """Run-time attacks for one evaluation, and what they report."""

    def __init__(self, model: nn.Module, names: Sequence[str], eps: float, test: ImageSet,
                 options: SuiteOptions, train_images: TrainImages | None = None, *,
                 device: torch.device | str = "cpu", batch_size: int = 256,
                 log: Callable[[str], None] = print):
        self.model, self.eps, self.test, self.options = model, eps, test, options
        self.device, self.batch_size, self.log = torch.device(device), batch_size, log
        self.cfg = options.configs
        self.names = list(names)
        self.fns: dict[str, Callable] = {}
        self.details: dict[str, Any] = {}
        self.detector: SqueezeDetector | None = None
        self._records: dict[str, list] = {}
        self._aigan: AiGanAttack | None = None
        need_train = "ai-gan" in self.names or options.detect
        parts = train_images() if need_train and train_images is not None else None
        if need_train and parts is None:
            raise DsaraError("ai-gan and --detect need the run's training images; evaluate a "
                             "`dsara train` run directory")
        self._build(parts)

    # --------------------------------------------------------------------- building

    def _build(self, parts) -> None:
        if "so-krylov" in self.names:
            cfg = self.cfg["so-krylov"]
            self.fns["so-krylov"] = lambda m, x, y, eps, gen: so_krylov(m, x, y, eps, cfg,
                                                                        generator=gen)
            self.details["so-krylov"] = {"config": asdict(cfg), "reconstruction": True}
        transfer = [n for n in self.names if n in TRANSFER_KINDS]
        if transfer:
            self._build_transfer(transfer)
        if "ai-gan" in self.names:
            self._build_aigan(parts[0])
        if self.options.detect:
            self._build_detector(parts[1])

    def _build_transfer(self, names: list[str]) -> None:
        from ..train.checkpoint import load_trained
        from .run import prepare_for_eval

        if not self.options.surrogates:
            raise DsaraError(f"{names[0]} needs surrogate models: --surrogate "
                             "RUN_DIR[,RUN_DIR...]")
        members, described = [], []
        for target in self.options.surrogates:
            model, ckpt, path = load_trained(target)
            members.append(prepare_for_eval(model).to(self.device))
            described.append({"run": str(target), "checkpoint": str(path),
                              "model": ckpt.get("model_spec", {}).get("name"),
                              "train_method": ckpt.get("config", {}).get("method")})
        cfg = self.cfg["transfer"]
        for name in names:
            self.fns[name] = transfer_attack(members, TRANSFER_KINDS[name], cfg)
            self.details[name] = {"surrogates": described, "config": asdict(cfg),
                                  "logits": "averaged over the surrogates"}

    def _build_aigan(self, fit: ImageSet) -> None:
        cfg = self.cfg["ai-gan"]
        x = fit.images.float().div(255).to(self.device)
        num_classes = self._num_classes()
        G, info = prepare_generator(self.model, x, fit.labels.to(self.device), self.eps,
                                    num_classes, self.options.cache_dir, cfg, self.log)
        self._aigan = AiGanAttack(G)
        self.fns["ai-gan"] = self._aigan
        self.details["ai-gan"] = {"config": asdict(cfg), "reconstruction": True,
                                  "n_train": min(len(fit), cfg.max_train or len(fit)), **info}

    def _build_detector(self, held_out: ImageSet) -> None:
        if self.options.detect not in DETECTORS:
            raise DsaraError(f"unknown detector {self.options.detect!r}; detectors: "
                             f"{', '.join(DETECTORS)}")
        cfg = self.cfg["squeeze"]
        x = held_out.images.float().div(255).to(self.device)
        self.detector = fit_detector(self.model, x, cfg, self.batch_size)
        if ADAPTIVE not in self.names:
            self.names.append(ADAPTIVE)
        self.fns[ADAPTIVE] = adaptive_attack(cfg)
        self.details[ADAPTIVE] = {"config": {"steps": cfg.adaptive_steps, "step": "eps/4",
                                             "kappa": cfg.adaptive_kappa},
                                  "reconstruction": True}

    def _num_classes(self) -> int:
        with torch.no_grad():
            return self.model(self.test.images[:1].float().div(255).to(self.device)).shape[1]

    # --------------------------------------------------------------------- running

    def attack_fns(self) -> dict[str, Callable]:
        """name -> function for every attack asked for (built ones, else the registry's), each
        wrapped to record the detector's verdict when there is a detector."""
        fns = {n: self.fns.get(n) or attack_fn(n) for n in self.names}
        if self.detector is None:
            return fns
        return {n: self._recorded(n, fn) for n, fn in fns.items()}

    def _recorded(self, name: str, fn: Callable) -> Callable:
        self._records[name] = []

        def attack(model, x, y, eps, gen):
            x_adv = fn(model, x, y, eps, gen)
            with torch.no_grad():
                p = model(x_adv.float()).float().softmax(1)
                flags = self.detector.flags(model, x_adv, p)
            self._records[name].append(((p.argmax(1) == y).cpu(), flags.cpu()))
            return x_adv
        return attack

    def finish(self) -> dict[str, Any]:
        """The report's details, once `evaluate` has run the attacks."""
        if self._aigan is not None:
            self.details["ai-gan"].update(self._aigan.summary(), **self._pgd20_speed())
        if self.detector is not None:
            self.details["detection"] = self._detection()
        return self.details

    def _pgd20_speed(self) -> dict[str, Any]:
        n = min(len(self.test), PGD20_TIMING_IMAGES)
        x = self.test.images[:n].float().div(255).to(self.device)
        y = self.test.labels[:n].to(self.device)
        gen = torch.Generator(self.device).manual_seed(0)
        start = time.perf_counter()
        for i in range(0, n, self.batch_size):
            pgd(self.model, x[i:i + self.batch_size], y[i:i + self.batch_size], self.eps,
                self.eps / 4, 20, generator=gen)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        return {"pgd20_images_per_s": n / seconds, "speed_device": str(self.device),
                "speed_batch": min(self.batch_size, n), "pgd20_timed_images": n}

    def _detection(self) -> dict[str, Any]:
        loader = Loader(self.test, min(self.batch_size, len(self.test)), shuffle=False,
                        drop_last=False, device=self.device)
        correct, flags = [], []
        with torch.no_grad():
            for x, y in loader.epoch(0):
                p = self.model(x.float()).float().softmax(1)
                correct.append((p.argmax(1) == y).cpu())
                flags.append(self.detector.flags(self.model, x, p).cpu())
        adv = {name: (torch.cat([c for c, _ in rec]), torch.cat([f for _, f in rec]))
               for name, rec in self._records.items() if name != "clean" and rec}
        return {"detector": "squeeze", **self.detector.describe(),
                **detection_metrics(torch.cat(correct), torch.cat(flags), adv)}


# ----------------------------------------------------------------------------- the table

def details_table(details: dict[str, Any]) -> str:
    """The printed lines for the suite's report sections."""
    lines = []
    if "so-krylov" in details:
        c = details["so-krylov"]["config"]
        lines.append(f"so-krylov [recon]: {c['steps']} steps, {c['iters']} {c['solver']} "
                     f"iterations (Hessian-vector products) per step, damping {c['damping']:g}")
    for name in TRANSFER_KINDS:
        if name in details:
            runs = ", ".join(s["run"] for s in details[name]["surrogates"])
            lines.append(f"{name}: crafted on {runs} (logits averaged), labels "
                         f"{details[name]['config']['labels']}")
    if "ai-gan" in details:
        lines.append(_aigan_line(details["ai-gan"]))
    if ADAPTIVE in details:
        c = details[ADAPTIVE]["config"]
        lines.append(f"{ADAPTIVE} [recon]: PGD-{c['steps']} on model + squeezed models, "
                     f"kappa {c['kappa']:g}")
    if "detection" in details:
        lines += _detection_lines(details["detection"])
    return "\n".join(lines)


def _aigan_line(d: dict[str, Any]) -> str:
    source = "trained now" if d.get("trained_now") else f"cached in {d.get('cache')}"
    speed = (f"{d['images_per_s']:.0f} images/s vs PGD-20 {d['pgd20_images_per_s']:.0f} "
             f"images/s ({d['speed_device']}, batch {d['speed_batch']})"
             if d.get("images_per_s") and d.get("pgd20_images_per_s") else "")
    success = d.get("targeted_success")
    return (f"ai-gan [recon]: targeted success {100 * (success or 0):.2f}%, {speed}; "
            f"generator {source}")


def _detection_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"detection (feature squeezing: {', '.join(d['squeezers'])}; threshold "
             f"{d['threshold']:.4f} at FPR {100 * d['fpr_target']:.0f}% on {d['n_fit']} held-out "
             f"clean training images): clean FPR on test {100 * d['clean_fpr']:.2f}%, clean "
             f"accuracy with rejection {100 * d['clean_accuracy_with_rejection']:.2f}%",
             f"{'attack':<17} {'successful':>10} {'detected':>9} {'acc w/ rejection':>17}"]
    for name, a in d["attacks"].items():
        rate = "-" if a["detection_rate"] is None else f"{100 * a['detection_rate']:.2f}%"
        lines.append(f"{name:<17} {a['successful_adversarial']:>10} {rate:>9} "
                     f"{100 * a['accuracy_with_rejection']:>16.2f}%")
    lines.append(f"{'worst case':<17} {'':>10} {'':>9} "
                 f"{100 * d['worst_case_with_rejection']:>16.2f}%")
    return lines
