"""LADDER — latent-boundary-guided adversarial training (Zhou, Tsang, Yin, Machine Learning 2022).

Following the authors' code (SEEDS.md [code]), for a classifier f = h o phi (phi: everything up to
the pooled penultimate features z, h: the final linear layer):

1. a generator G (here a small decoder trained by dsara) inverts phi: min ||G(phi(x)) - x||^2;
2. per class pair (i, j) an attention-SVM in latent space: a(z) = exp(softmax(tanh(W_a z + b_a))),
   score = w^T (z * a(z)) + b, hinge loss + reg ||w||^2, `svm_per_class` images per class (200),
   SGD 0.01, 10 epochs;
3. each training image x of class s gets a target class t != s (drawn uniformly) and is moved
   along the pair's normal towards t: z' = z + eps (a(z) * w) (w not normalized), x_gen = G(z');
4. fine-tuning: 1/2 CE(f(x), y) + 1/2 CE(f(x_gen), s) (the source label), SGD.

The classifier to fine-tune is the ``--teacher RUN_DIR`` (a `dsara train` run of the same
architecture; its best.pt weights are loaded before the first epoch): LADDER perturbs the latent
space of a trained network. Steps 1-3 run once per run, offline, and their result is cached in
``RUN_DIR/ladder_set.pt``; a resumed run reads it back. Where the authors' code was not readable
or does not fit (the decoder's architecture — theirs is a GAN generator —, the SVM mini-batch of
64, the hinge weighting) the choice is ours, **[recon]**, configurable in `LadderOptions`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...data.datasets import ImageSet
from ...errors import DsaraError
from ...utils.files import atomic_write
from ..checkpoint import check_same_model
from ..losses import AdvParams, Terms, _with_aux
from .base import Method, typed_options
from .extra import loaders, read_teacher


@dataclass(frozen=True)
class LadderOptions:
    eps: float = 0.5  # latent step along a(z) * w (the authors start at 0.5 and go upward)
    decoder_epochs: int = 10  # epochs of decoder training on the training part [recon]
    decoder_lr: float = 1e-3  # Adam learning rate of the decoder [recon]
    decoder_width: int = 64  # channels of the decoder's first feature map [recon]
    svm_per_class: int = 200  # latent points per class for each pair's SVM (authors: 200)
    svm_epochs: int = 10  # (authors: 10)
    svm_lr: float = 0.01  # SGD (authors: 0.01)
    svm_reg: float = 0.01  # weight of ||w||^2 next to the mean hinge loss [recon]
    generated_fraction: float = 0.5  # share of each batch that is generated (1/2: the authors')

    def validate(self) -> None:
        if self.eps < 0 or min(self.decoder_epochs, self.svm_epochs) < 0 or min(
                self.decoder_lr, self.svm_lr, self.svm_per_class, self.decoder_width) <= 0 \
                or self.svm_reg < 0 or not 0 < self.generated_fraction < 1:
            raise DsaraError(f"ladder: invalid options {self}")


# ----------------------------------------------------------------------------- latent space

def latent(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """phi(x): the input of the model's final linear layer (its pooled penultimate features)."""
    seen = {}
    handle = model.classifier.register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["z"].float()


class Decoder(nn.Module):
    """G: latent (B, d) -> images (B, C, H, W) in [0, 1] ([recon] architecture)."""

    def __init__(self, d: int, channels: int, size: int, width: int = 64):
        super().__init__()
        self.size, self.start = size, max(1, -(-size // 4))
        self.fc = nn.Linear(d, width * self.start ** 2)
        self.body = nn.Sequential(
            nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(width // 2, channels, 3, padding=1))
        self.width = width

    def forward(self, z):
        h = self.fc(z).view(-1, self.width, self.start, self.start)
        h = self.body(h)
        if h.shape[-1] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(h)


def train_decoder(z: torch.Tensor, x: torch.Tensor, o: LadderOptions, gen: torch.Generator
                  ) -> Decoder:
    z, x = z.detach(), x.detach()
    dec = Decoder(z.shape[1], x.shape[1], x.shape[-1], o.decoder_width).to(z.device)
    opt = torch.optim.Adam(dec.parameters(), lr=o.decoder_lr)
    for _ in range(o.decoder_epochs):
        for idx in torch.randperm(len(z), generator=gen).split(128):
            loss = F.mse_loss(dec(z[idx]), x[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return dec.eval()


class PairSVMs(nn.Module):
    """One attention-SVM per class pair (i < j), all trained at once; +1 = class i."""

    def __init__(self, d: int, num_classes: int):
        super().__init__()
        self.pairs = [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]
        p = len(self.pairs)
        self.wa = nn.Parameter(torch.randn(p, d, d) * d ** -0.5)
        self.ba = nn.Parameter(torch.zeros(p, d))
        self.w = nn.Parameter(torch.randn(p, d) * d ** -0.5)
        self.b = nn.Parameter(torch.zeros(p))

    def attention(self, z: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """a(z) for z (N, d) under pair[n]'s SVM."""
        pre = torch.einsum("nd,ned->ne", z, self.wa[pair]) + self.ba[pair]
        return torch.exp(F.softmax(torch.tanh(pre), -1))

    def score(self, z: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        return ((z * self.attention(z, pair)) * self.w[pair]).sum(-1) + self.b[pair]

    def pair_index(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.minimum(s, t), torch.maximum(s, t)
        c = int(max(j for _, j in self.pairs)) + 1
        return lo * c - lo * (lo + 1) // 2 + (hi - lo - 1)  # index of (lo, hi) in self.pairs


def train_svms(z: torch.Tensor, y: torch.Tensor, num_classes: int, o: LadderOptions,
               gen: torch.Generator) -> PairSVMs:
    z = z.detach()
    svms = PairSVMs(z.shape[1], num_classes).to(z.device)
    per = [torch.nonzero(y == k).flatten()[: o.svm_per_class] for k in range(num_classes)]
    rows = [(p, n, 1.0 if k == i else -1.0) for p, (i, j) in enumerate(svms.pairs)
            for k in (i, j) for n in per[k].tolist()]
    pair = torch.tensor([r[0] for r in rows], device=z.device)
    idx = torch.tensor([r[1] for r in rows], device=z.device)
    sign = torch.tensor([r[2] for r in rows], device=z.device)
    opt = torch.optim.SGD(svms.parameters(), lr=o.svm_lr)
    for _ in range(o.svm_epochs):
        for b in torch.randperm(len(rows), generator=gen).split(64 * len(svms.pairs)):
            hinge = F.relu(1 - sign[b] * svms.score(z[idx[b]], pair[b])).mean()
            loss = hinge + o.svm_reg * svms.w.pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return svms.eval()


@torch.no_grad()
def generate(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, svms: PairSVMs, decoder: Decoder,
             eps: float) -> torch.Tensor:
    """G(z + eps * (a(z) * w)) with w oriented from class s towards class t; eps = 0 gives the
    decoder's reconstruction G(z)."""
    pair = svms.pair_index(s, t)
    towards = torch.where(s < t, -1.0, 1.0)[:, None]  # class s < t is the SVM's +1 side
    z2 = z + eps * towards * svms.attention(z, pair) * svms.w[pair]
    return decoder(z2).clamp(0, 1)


# ----------------------------------------------------------------------------- the run

def _latents(model, images: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    zs, xs = [], []
    with torch.no_grad():
        for chunk in images.split(256):
            x = chunk.to(device).float().div_(255)
            zs.append(latent(model, x))
            xs.append(x)
    return torch.cat(zs), torch.cat(xs)


def build_set(model, fit: ImageSet, num_classes: int, o: LadderOptions, seed: int, device
              ) -> ImageSet:
    """Steps 1-3: the generated images (uint8) with their source labels."""
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    try:
        z, x = _latents(model, fit.images, device)
    finally:
        model.train(was)
    y = fit.labels.to(device)
    with torch.enable_grad():
        decoder = train_decoder(z, x, o, gen)
        svms = train_svms(z, y, num_classes, o, gen)
    offset = torch.randint(1, num_classes, (len(y),), generator=gen).to(device)
    t = (y + offset) % num_classes  # uniform over the other classes
    out = torch.cat([generate(zc, sc, tc, svms, decoder, o.eps)
                     for zc, sc, tc in zip(z.split(256), y.split(256), t.split(256))])
    return ImageSet((out * 255).round().to(torch.uint8).cpu(), fit.labels.clone())


def setup(cfg, model, fit: ImageSet, val: ImageSet, test: ImageSet, epochs_done: int, log):
    """Load the teacher's weights (fresh runs), build or read the cached set, mix it in."""

    o = typed_options(cfg.method, LadderOptions, cfg.method_options)
    if not cfg.teacher:
        raise DsaraError("ladder fine-tunes a trained network: give --teacher RUN_DIR, a dsara "
                         "train run of the same architecture")
    if cfg.unlabeled:
        raise DsaraError("ladder takes no --unlabeled images (that is mart-ss)")
    ckpt, teacher = read_teacher(cfg.teacher, cfg, "ladder")
    check_same_model(model, ckpt["model"], f"ladder teacher {cfg.teacher}")
    if epochs_done == 0:  # a resumed run already holds its fine-tuned weights
        model.load_state_dict(ckpt["model"])
    path = Path(cfg.out) / "ladder_set.pt"
    record = {"options": dataclasses.asdict(o), "teacher": str(cfg.teacher), "seed": cfg.seed}
    cached = torch.load(path, weights_only=True) if path.is_file() else None
    if cached is not None and cached.get("record") == record:
        generated = ImageSet(cached["images"], cached["labels"])
    else:
        # the teacher's latent space, also when a resumed run lost its cache
        generated = build_set(teacher, fit, model.classifier.out_features, o, cfg.seed,
                              cfg.device)
        atomic_write(path, lambda fh: torch.save({"record": record, "images": generated.images,
                                                  "labels": generated.labels}, fh))
        log(f"ladder: generated {len(generated)} images, cached in {path}")
    return loaders(cfg, fit, generated, o.generated_fraction, "ladder")


def ladder(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """CE on the batch's clean half + CE on its generated half (the mixed loader's layout: the
    first rows are training images, the rest generated ones), each weighted by 1/2."""
    n = x.shape[0] - round((p.options or LadderOptions()).generated_fraction * x.shape[0])
    logits, aux = model(x, return_aux=True)
    clean = F.cross_entropy(logits[:n].float(), y[:n])
    gen = F.cross_entropy(logits[n:].float(), y[n:])
    loss = 0.5 * clean + 0.5 * gen
    terms = {"ce_clean": clean.detach(), "ce_generated": gen.detach()}
    if aux is not None and p.aux_input == "clean":  # the auxiliary loss of the clean half only
        aux, y = aux[:n], y[:n]
    return _with_aux(loss, terms, aux, y, p.aux_weight)


RECORDS = (
    # no PGD: the generated set replaces it
    Method("ladder", ladder, 0.25, 10, options=LadderOptions, setup=setup),
)
