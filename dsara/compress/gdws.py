"""GDWS: approximate a trained network's convs by generalized depthwise-separable ones, no training.

Dbouk & Shanbhag, "Generalized Depthwise-Separable Convolutions for Adversarially Robust and
Efficient Neural Networks", NeurIPS 2021; written from the paper's description and the authors'
public code (github.com/hsndbk4/GDWS), not copied:

- For a conv W (M x C x K x K), the block of input channel c, W_c (M x K^2), has the SVD
  sum_i s_ci u_ci v_ci^T. Keeping g_c terms of channel c gives a GDWS conv with G = sum g_c
  depthwise kernels (the v_ci, reshaped KxK) and a 1x1 conv whose columns are s_ci u_ci.
- Its error is sum_c alpha_c sum_{i > g_c} s_ci^2, where alpha_c weighs channel c by how much an
  error in its weights moves the network's decision (`error_weights`).
- LEGO (error budget beta): drop the smallest alpha s^2 terms while their sum stays <= beta.
- MEGO (complexity budget): keep the G largest terms.

The stem and 1x1 convs are left alone (as the authors do). Where we differ from the authors' code:
alpha is measured with the network in eval mode (their script runs BatchNorm in train mode on
batches of one image); MEGO's budget is given as a fraction of each conv's multiply-adds (their
MEGO takes G, and uses an undefined variable); a conv whose GDWS form would cost at least as many
multiply-adds as the original stays a standard conv; every layer keeps at least one kernel.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..arch.compressed import GDWSConv, eligible_convs, set_module
from ..attacks.gradient import pgd
from ..errors import DsaraError
from .base import Compressor

ALGORITHMS = ("lego", "mego")


@dataclass
class GDWSConfig:
    algorithm: str = "lego"  # lego: error budget beta per conv | mego: multiply-add budget
    # lego: beta, the alpha-weighted squared error each conv may drop (the authors' README
    # example, 0.005); mego: the fraction (0, 1] of each conv's multiply-adds its GDWS form keeps
    budget: float | None = None
    n_images: int = 1000  # training images whose PGD examples give alpha (authors: 1000)
    eps: float = 8 / 255  # the PGD of the alpha images (authors: 8/255, 10 steps of 2/255)
    step_size: float = 2 / 255
    steps: int = 10
    keep_larger: bool = False  # True: use the GDWS form even where it costs more than the conv
    seed: int = 0

    def resolved(self) -> GDWSConfig:
        if self.algorithm not in ALGORITHMS:
            raise DsaraError(f"unknown GDWS algorithm {self.algorithm!r}; known: "
                             f"{', '.join(ALGORITHMS)}")
        budget = self.budget if self.budget is not None else (
            0.005 if self.algorithm == "lego" else 0.5)
        if not (budget >= 0 if self.algorithm == "lego" else 0 < budget <= 1):
            raise DsaraError(f"GDWS {self.algorithm} budget {budget} is invalid: lego takes an "
                             "error budget beta >= 0, mego a multiply-add fraction in (0, 1]")
        if self.n_images < 1:
            raise DsaraError(f"GDWS needs at least one image for alpha, got {self.n_images}")
        return GDWSConfig(**{**self.__dict__, "budget": float(budget)})


@dataclass
class ChannelSVD:
    """Per-input-channel SVDs of one conv: U (C, M, R), S (C, R), Vh (C, R, K*K), R = min(M, K^2)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> ChannelSVD:
        M, C, kh, kw = weight.shape
        blocks = weight.detach().double().permute(1, 0, 2, 3).reshape(C, M, kh * kw)
        U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)  # batched over channels
        return cls(U, S, Vh)


def lego(scores: torch.Tensor, beta: float) -> torch.Tensor:
    """Keep-mask of LEGO: drop the smallest scores while their sum stays <= beta; keep >= 1."""
    flat = scores.flatten()
    order = torch.argsort(flat)  # ascending: the cheapest errors first
    dropped = torch.cumsum(flat[order], 0) <= beta
    dropped[-1] = False  # the largest term always stays: a conv needs one kernel
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[dropped]] = False
    return keep.view_as(scores)


def mego(scores: torch.Tensor, G: int) -> torch.Tensor:
    """Keep-mask of MEGO: the G largest scores."""
    flat = scores.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, min(max(G, 1), flat.numel())).indices] = True
    return keep.view_as(scores)


def mego_kernels(conv: nn.Conv2d, fraction: float) -> int:
    """The most kernels G whose GDWS multiply-adds, G*(K^2 + M) per output pixel, stay within
    `fraction` of the conv's M*C*K^2."""
    K2, M, C = conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels, conv.in_channels
    return max(1, math.floor(fraction * M * C * K2 / (K2 + M)))


def gdws_layer(conv: nn.Conv2d, svd: ChannelSVD, keep: torch.Tensor) -> GDWSConv:
    """The GDWS conv that keeps the singular triplets `keep` (C, R) of `svd`."""
    counts = keep.sum(1).tolist()
    layer = GDWSConv(conv, counts).to(conv.weight.device)
    c_idx, i_idx = keep.nonzero(as_tuple=True)  # sorted by channel, then by rank
    kh, kw = conv.kernel_size
    dw = svd.Vh[c_idx, i_idx].reshape(-1, 1, kh, kw)  # (G, 1, K, K)
    pw = (svd.U[c_idx, :, i_idx] * svd.S[c_idx, i_idx, None]).T  # (M, G)
    with torch.no_grad():
        layer.depthwise.weight.copy_(dw.to(conv.weight.dtype))
        layer.pointwise.weight.copy_(pw[:, :, None, None].to(conv.weight.dtype))
        if conv.bias is not None:
            layer.pointwise.bias.copy_(conv.bias)
    return layer


def gdws_macs_per_pixel(conv: nn.Conv2d, G: int) -> int:
    return G * (conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels)


def conv_macs_per_pixel(conv: nn.Conv2d) -> int:
    return conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]


# ----------------------------------------------------------------------------- alpha

def error_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: GDWSConfig,
                  names: list[str]) -> dict[str, torch.Tensor]:
    """alpha_c of every named conv, (C,) each, from PGD examples of the images x (the authors'
    eq. 8 and compute_alphas.py): for each adversarial image with top class t and every other
    class j, ||d(z_t - z_j)/dW_c||^2 / (2 (z_t - z_j)^2 M K^2), summed over j, averaged over
    the images."""
    model.eval()
    gen = torch.Generator(x.device).manual_seed(cfg.seed)
    x_adv = pgd(model, x, y, cfg.eps, cfg.step_size, cfg.steps, generator=gen)
    weights = [model.get_submodule(n).weight for n in names]
    alphas = [torch.zeros(w.shape[1], dtype=torch.float64, device=w.device) for w in weights]
    for i in range(len(x_adv)):  # per image: the squared gradient norms do not add over a batch
        z = model(x_adv[i: i + 1]).float()[0]
        t = int(z.argmax())
        for j in range(len(z)):
            if j == t:
                continue
            diff = z[t] - z[j]
            grads = torch.autograd.grad(diff, weights, retain_graph=True)
            denom = 2 * diff.detach().double() ** 2
            for a, g in zip(alphas, grads):
                M, _, kh, kw = g.shape
                a += g.double().pow(2).sum((0, 2, 3)) / (denom * M * kh * kw)
    return {n: a / len(x_adv) for n, a in zip(names, alphas)}


# ----------------------------------------------------------------------------- the network

def plan_layer(conv: nn.Conv2d, alpha: torch.Tensor, cfg: GDWSConfig
               ) -> tuple[ChannelSVD, torch.Tensor, dict]:
    """(svd, keep mask, report) of one conv under the config's algorithm and budget."""
    svd = ChannelSVD.of(conv.weight)
    scores = alpha.double()[:, None].to(svd.S.device) * svd.S ** 2  # (C, R)
    keep = (lego(scores, cfg.budget) if cfg.algorithm == "lego"
            else mego(scores, mego_kernels(conv, cfg.budget)))
    G = int(keep.sum())
    report = {"G": G, "C": conv.in_channels, "M": conv.out_channels,
              "kernel": list(conv.kernel_size), "dropped_error": float(scores[~keep].sum()),
              "macs_fraction": gdws_macs_per_pixel(conv, G) / conv_macs_per_pixel(conv)}
    return svd, keep, report


def compress_gdws(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: GDWSConfig
                  ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Replace every eligible conv of `model` (in place) by its GDWS approximation.
    Returns (structure per replaced layer, report per eligible layer)."""
    cfg = cfg.resolved()
    convs = dict(eligible_convs(model))
    if not convs:
        raise DsaraError("this network has no conv GDWS can approximate (dense, larger than "
                         "1x1, not the stem); cell networks are depthwise-separable already")
    alphas = error_weights(model, x, y, cfg, list(convs))
    structure, report = {}, {}
    for name, conv in convs.items():
        svd, keep, rep = plan_layer(conv, alphas[name], cfg)
        rep["replaced"] = cfg.keep_larger or rep["macs_fraction"] < 1
        report[name] = rep
        if rep["replaced"]:
            layer = gdws_layer(conv, svd, keep)
            set_module(model, name, layer)
            structure[name] = {"type": "gdws", "counts": layer.counts}
    return structure, report



def alpha_images(fit, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` seeded training images (and labels) whose PGD examples weigh GDWS's error."""
    idx = torch.randperm(len(fit), generator=torch.Generator().manual_seed(seed))[:n]
    sub = fit.subset(idx)
    return sub.images.float().div(255).to(device), sub.labels.to(device)


def apply(model, cfg, train_cfg, fit, input_size, device):
    """`dsara compress --method gdws` (the `Compressor` record's apply)."""
    gcfg = GDWSConfig(algorithm=cfg.algorithm, budget=cfg.budget, n_images=cfg.n_images,
                      eps=train_cfg.eps, step_size=train_cfg.eps / 4, seed=cfg.seed)
    x, y = alpha_images(fit, gcfg.n_images, cfg.seed, device)
    structure, layers = compress_gdws(model, x, y, gcfg)
    return structure, layers, dataclasses.asdict(gcfg.resolved())


RECORD = Compressor("gdws", apply)
