"""Feature-squeezing detection (Xu, Evans, Qi, NDSS 2018), as in the authors' code [code].

Squeezers: bit depth b, x' = rint(x (2^b - 1)) / (2^b - 1); median k x k per channel with
half-sample-symmetric ("reflect" in scipy) padding, for even k the window covers {i - k/2, ...,
i + k/2 - 1} and the upper median is taken (scipy's rank filter, which the authors use); non-local
means through OpenCV (uint8, `fastNlMeansDenoisingColored(h, hColor, patch, search)`), used when
OpenCV is installed (the optional extra ``pip install "dsara[squeeze]"``). The score of an image is
d(x) = max over squeezers of ||softmax f(x) - softmax f(s(x))||_1, in [0, 2]; the threshold comes
from legitimate images only, T = sorted(d)[ceil(N (1 - FPR)) - 1], and an image is flagged when
d(x) > T. The CIFAR-10 configuration of the paper is the default: bit depth 5, median 2 x 2,
non-local means 13-3-2.

The adaptive attacker (He et al., 2017) knows the detector: PGD on
sum over views v in {identity, squeezers} of CE(f(v(x')), y) - kappa * d(x'), so that the model and
every squeezed model are fooled together and the squeezed predictions stay close. Bit depth and
non-local means have no useful gradient; the attacker passes them straight through (BPDA, Athalye
et al., 2018: identity on the backward pass). The objective and kappa are ours [recon].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.krylov import project
from ..errors import DsaraError

Squeezer = Callable[[torch.Tensor], torch.Tensor]
NLMEANS_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class SqueezeConfig:
    bits: int = 5  # bit-depth squeezer (Xu et al., CIFAR-10: 5)
    median: int = 2  # median filter size k x k (Xu et al., CIFAR-10: 2)
    nlmeans: str = "auto"  # auto: when OpenCV is installed | on: required | off
    nl_search: int = 13  # non-local means search window (Xu et al.: 13)
    nl_patch: int = 3  # non-local means patch size (Xu et al.: 3)
    nl_strength: float = 2.0  # non-local means filter strength h = hColor (Xu et al.: 2)
    fpr: float = 0.05  # false-positive rate on held-out clean training images
    adaptive_steps: int = 20  # PGD steps of eps/4 of the adaptive attacker
    adaptive_kappa: float = 1.0  # weight of the detector score in its objective [recon]

    def validate(self) -> SqueezeConfig:
        checks = [(1 <= self.bits <= 8, f"bits must be in 1..8, got {self.bits}"),
                  (self.median >= 1, f"median size must be >= 1, got {self.median}"),
                  (self.nlmeans in NLMEANS_MODES, f"nlmeans must be one of "
                   f"{', '.join(NLMEANS_MODES)}, got {self.nlmeans!r}"),
                  (0 < self.fpr < 1, f"fpr must be in (0, 1), got {self.fpr}"),
                  (self.adaptive_steps >= 0, "adaptive_steps must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise DsaraError(f"feature squeezing: {message}")
        return self


# ----------------------------------------------------------------------------- squeezers

def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels  # round half to even, as numpy's rint


def _pad_symmetric(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Pad H and W with mirrored edges that repeat the edge pixel (d c b a | a b c d)."""
    def pad_dim(t, dim):
        n = t.shape[dim]
        lo = t.narrow(dim, 0, before).flip(dim)
        hi = t.narrow(dim, n - after, after).flip(dim)
        return torch.cat([lo, t, hi], dim)
    return pad_dim(pad_dim(x, 2), 3)


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median per channel; differentiable (the selected pixel gets the gradient)."""
    if k == 1:
        return x
    before, after = k // 2, (k - 1) // 2  # scipy's window origin: centre at index k // 2
    padded = _pad_symmetric(x, before, after)
    b, c, h, w = x.shape
    patches = F.unfold(padded.reshape(b * c, 1, *padded.shape[2:]), k)  # (B*C, k*k, H*W)
    med = patches.sort(dim=1).values[:, (k * k) // 2]  # upper median when k*k is even
    return med.view(b, c, h, w)


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def nl_means(x: torch.Tensor, search: int, patch: int, strength: float) -> torch.Tensor:
    """OpenCV non-local means on uint8 images (colour or grey), back to [0, 1] floats."""
    cv2 = _cv2()
    if cv2 is None:
        raise DsaraError('non-local means needs OpenCV: pip install "dsara[squeeze]" '
                         "(opencv-python-headless), or set nlmeans off")
    imgs = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    out = []
    for img in imgs.permute(0, 2, 3, 1).numpy():  # (H, W, C) per image
        if img.shape[2] == 3:
            den = cv2.fastNlMeansDenoisingColored(img, None, strength, strength, patch, search)
        else:
            den = cv2.fastNlMeansDenoising(img[:, :, 0], None, strength, patch, search)[..., None]
        out.append(torch.from_numpy(den))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def squeezers(config: SqueezeConfig) -> dict[str, Squeezer]:
    """name -> squeezer, in the order of the paper's table."""
    config.validate()
    out: dict[str, Squeezer] = {f"bit_depth_{config.bits}": lambda x: bit_depth(x, config.bits),
                                f"median_{config.median}x{config.median}":
                                    lambda x: median_filter(x, config.median)}
    if config.nlmeans == "on" or (config.nlmeans == "auto" and _cv2() is not None):
        name = f"nl_means_{config.nl_search}_{config.nl_patch}_{config.nl_strength:g}"
        out[name] = lambda x: nl_means(x, config.nl_search, config.nl_patch,
                                       config.nl_strength)
    return out


# ----------------------------------------------------------------------------- the detector

def squeeze_scores(model: nn.Module, x: torch.Tensor, squeeze: dict[str, Squeezer],
                   probs: torch.Tensor | None = None) -> torch.Tensor:
    """d(x) per image: max over squeezers of the L1 distance of the softmax outputs."""
    with torch.no_grad():
        p = model(x.float()).float().softmax(1) if probs is None else probs
        dists = [(p - model(s(x.float())).float().softmax(1)).abs().sum(1)
                 for s in squeeze.values()]
    return torch.stack(dists).amax(0)


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """T = sorted(scores)[ceil(N (1 - fpr)) - 1]: flagging d > T flags at most fpr of them."""
    n = scores.numel()
    if n == 0:
        raise DsaraError("no clean images to set the squeeze threshold on")
    k = math.ceil(n * (1 - fpr) - 1e-9)  # 1e-9: 100 * (1 - 0.05) is 95.00000000000001
    return scores.flatten().sort().values[max(k, 1) - 1].item()


@dataclass
class SqueezeDetector:
    """Feature squeezing with its threshold; `flags(model, x)` is True where d(x) > threshold."""

    config: SqueezeConfig
    threshold: float
    n_fit: int  # clean images the threshold was set on

    @property
    def squeeze(self) -> dict[str, Squeezer]:
        return squeezers(self.config)

    def scores(self, model, x, probs=None):
        return squeeze_scores(model, x, self.squeeze, probs)

    def flags(self, model, x, probs=None):
        return self.scores(model, x, probs) > self.threshold

    def describe(self) -> dict:
        return {"squeezers": list(self.squeeze), "threshold": self.threshold,
                "fpr_target": self.config.fpr, "n_fit": self.n_fit,
                "fit_on": "held-out clean training images"}


def fit_detector(model: nn.Module, images: torch.Tensor, config: SqueezeConfig = SqueezeConfig(),
                 batch_size: int = 256) -> SqueezeDetector:
    """The threshold at config.fpr from clean images (N, C, H, W) in [0, 1]."""
    config.validate()
    squeeze = squeezers(config)
    scores = torch.cat([squeeze_scores(model, images[i:i + batch_size], squeeze)
                        for i in range(0, len(images), batch_size)])
    return SqueezeDetector(config, threshold_at_fpr(scores, config.fpr), len(images))


# ----------------------------------------------------------------------------- adaptive attack

def _straight_through(s: Squeezer) -> Squeezer:
    return lambda x: x + (s(x) - x).detach()  # forward s(x), backward identity (BPDA)


def _differentiable_views(config: SqueezeConfig) -> list[Squeezer]:
    views = []
    for name, s in squeezers(config).items():
        views.append(s if name.startswith("median") else _straight_through(s))
    return views


def adaptive_attack(config: SqueezeConfig = SqueezeConfig()):
    """An evaluate attack (model, x, y, eps, gen) that attacks the model and the squeezed models
    jointly while keeping the squeeze score low (see the module docstring) [recon]."""
    views = _differentiable_views(config)

    def objective(model, x_adv, y):
        logits = model(x_adv).float()
        p = logits.softmax(1)
        loss = F.cross_entropy(logits, y, reduction="sum")
        dists = []
        for view in views:
            logits_s = model(view(x_adv)).float()
            loss = loss + F.cross_entropy(logits_s, y, reduction="sum")
            dists.append((p - logits_s.softmax(1)).abs().sum(1))
        return loss - config.adaptive_kappa * torch.stack(dists).amax(0).sum()

    def attack(model, x, y, eps, gen):
        x32 = x.detach().float()
        noise = torch.rand(x32.shape, generator=gen, device=x.device)
        x_adv = project(x32, x32 + (2 * noise - 1) * eps, eps)
        for _ in range(config.adaptive_steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model, x_adv, y), x_adv)
            x_adv = project(x32, x_adv.detach() + eps / 4 * grad.sign(), eps)
        return x_adv.to(x.dtype)

    return attack


# ----------------------------------------------------------------------------- metrics

def detection_metrics(clean_correct: torch.Tensor, clean_flag: torch.Tensor,
                      adv: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Per attack (adversarial correct, flagged), bool per test image, ->
    detection rate on successful adversarial examples (clean correct, adversarial wrong),
    accuracy with rejection (clean correct and not flagged, and the adversarial image correct or
    flagged: Tramer, 2022), and the clean false-positive rate."""
    clean_ok = clean_correct & ~clean_flag
    per_attack, defended_all = {}, clean_ok.clone()
    for name, (correct, flag) in adv.items():
        success = clean_correct & ~correct
        defended = clean_ok & (correct | flag)
        defended_all &= defended
        n_success = int(success.sum())
        per_attack[name] = {
            "successful_adversarial": n_success,
            "detection_rate": float(flag[success].float().mean()) if n_success else None,
            "accuracy_with_rejection": float(defended.float().mean()),
        }
    return {"clean_fpr": float(clean_flag.float().mean()),
            "clean_accuracy_with_rejection": float(clean_ok.float().mean()),
            "attacks": per_attack,
            "worst_case_with_rejection": float(defended_all.float().mean())}
