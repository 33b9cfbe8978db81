"""AI-GAN: a conditional generator G(x, t) of L-inf perturbations for a target class t, trained
by dsara against the evaluated (frozen, eval-mode) model, then one forward pass per attack.

What is known (Bai et al., arXiv 2002.02196, through a reimplementation [2nd]): the generator's
loss is the frozen classifier's targeted cross-entropy on x + G(x, t), plus lambda times a GAN loss,
plus gamma * max(0, ||G(x, t)||_2 - c); in stage 1 the discriminator separates G's examples from
an attacker's (targeted PGD), in stage 2 from clean images. **[recon]**: lambda, gamma and c were
not found; ours are `AiGanConfig`'s defaults, as are the two small convolutional networks, the
optimizers and the epochs. G's output is eps * tanh(.), so every example is inside the eps-ball
by construction (then clipped to [0, 1]); the hinge acts on the L2 norm of that perturbation,
per image, with c a fraction of the largest L2 norm an eps-ball perturbation can have.

The trained generator is cached as RUN_DIR/ai_gan.pt with the config, eps and a fingerprint of
the model's weights; a cache made for other weights, another eps or another config is retrained.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.split import stratified_indices
from ..errors import DsaraError
from ..utils.files import atomic_write
from .gradient import pgd

CACHE_NAME = "ai_gan.pt"
CACHE_KIND = "dsara-ai-gan"


@dataclass(frozen=True)
class AiGanConfig:
    """AI-GAN's constants; every one is [recon] (not found in the paper's public material)."""

    lam: float = 1.0  # lambda: weight of the GAN (fool-the-discriminator) loss
    gamma: float = 10.0  # weight of the L2 hinge max(0, ||G(x, t)||_2 - c)
    c_fraction: float = 0.5  # c = c_fraction * eps * sqrt(C H W) (the eps-ball's largest L2)
    width: int = 32  # channels of the generator's first layer and of the discriminator
    stage1_epochs: int = 2  # discriminator: G's examples vs targeted PGD examples
    stage2_epochs: int = 3  # discriminator: G's examples vs clean images
    batch_size: int = 64
    lr: float = 1e-3  # Adam, both networks, betas (0.5, 0.999)
    pgd_steps: int = 5  # targeted PGD of eps/4 making stage 1's "real" examples
    max_train: int = 0  # training images used (0 = all given)
    seed: int = 0

    def validate(self) -> AiGanConfig:
        ok = (self.lam >= 0 and self.gamma >= 0 and self.c_fraction >= 0 and self.width >= 1
              and self.stage1_epochs >= 0 and self.stage2_epochs >= 0 and self.batch_size >= 1
              and self.lr > 0 and self.pgd_steps >= 0 and self.max_train >= 0)
        if not ok or self.stage1_epochs + self.stage2_epochs < 1:
            raise DsaraError(f"bad AI-GAN config {asdict(self)}: weights, epochs and sizes must "
                             "be >= 0 (at least one epoch), lr > 0")
        return self


# ----------------------------------------------------------------------------- networks

class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch))

    def forward(self, x):
        return F.relu(x + self.body(x))


class Generator(nn.Module):
    """G(x, t) -> perturbation eps * tanh(.), (B, C, H, W); t enters as one-hot planes."""

    def __init__(self, channels: int, num_classes: int, eps: float, width: int = 32):
        super().__init__()
        self.num_classes, self.eps = num_classes, eps
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels + num_classes, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            _Res(2 * w), _Res(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(t, self.num_classes).float()[:, :, None, None]
        planes = planes.expand(-1, -1, *x.shape[2:])  # (B, num_classes, H, W)
        return self.eps * torch.tanh(self.net(torch.cat([x, planes], 1)))


class Discriminator(nn.Module):
    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def adversarial(G: Generator, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (x + G(x, t)).clamp(0, 1)


# ----------------------------------------------------------------------------- losses

def l2_hinge(delta: torch.Tensor, c: float) -> torch.Tensor:
    """mean over images of max(0, ||delta||_2 - c): zero, with zero gradient, when within c."""
    return F.relu(delta.flatten(1).norm(dim=1) - c).mean()


def random_targets(y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """A target class != y per image, uniform over the others."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    return (y + shift) % num_classes


def generator_loss(model, D, G, x, t, cfg: AiGanConfig, c: float) -> torch.Tensor:
    delta = G(x, t)
    x_adv = (x + delta).clamp(0, 1)
    adv = F.cross_entropy(model(x_adv).float(), t)
    fool = F.binary_cross_entropy_with_logits(D(x_adv), torch.ones(len(x), device=x.device))
    return adv + cfg.lam * fool + cfg.gamma * l2_hinge(delta, c)


def discriminator_loss(D, real, fake) -> torch.Tensor:
    ones, zeros = torch.ones(len(real), device=real.device), torch.zeros(len(fake),
                                                                           device=fake.device)
    return (F.binary_cross_entropy_with_logits(D(real), ones)
            + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros))


def targeted_pgd(model, x, t, eps, steps, gen):
    """PGD that descends the cross-entropy to target t (the stage-1 'attacker')."""
    return pgd(model, x, t, eps, eps / 4, steps, loss_fn=lambda z, tt: -F.cross_entropy(
        z.float(), tt), generator=gen)


# ----------------------------------------------------------------------------- training

def train_generator(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                    num_classes: int, cfg: AiGanConfig = AiGanConfig(),
                    log: Callable[[str], None] = print) -> tuple[Generator, list[dict]]:
    """Train G against the frozen model on images (N, C, H, W) in [0, 1]; returns G in eval mode
    and the per-epoch history (losses, targeted success on the training images)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    device = images.device
    if cfg.max_train and cfg.max_train < len(labels):  # class-stratified, not the first N
        index = stratified_indices(labels, cfg.max_train, cfg.seed).to(device)
        images, labels = images[index], labels[index]
    G = Generator(images.shape[1], num_classes, eps, cfg.width).to(device)
    D = Discriminator(images.shape[1], cfg.width).to(device)
    opt_g = torch.optim.Adam(G.parameters(), cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), cfg.lr, betas=(0.5, 0.999))
    c = cfg.c_fraction * eps * math.sqrt(images[0].numel())
    gen = torch.Generator(device).manual_seed(cfg.seed)
    model.eval().requires_grad_(False)
    history = []
    try:
        for epoch in range(cfg.stage1_epochs + cfg.stage2_epochs):
            stage = 1 if epoch < cfg.stage1_epochs else 2
            stats = _epoch(model, G, D, opt_g, opt_d, images, labels, eps, c, stage, cfg, gen)
            history.append({"epoch": epoch + 1, "stage": stage, **stats})
            log(f"ai-gan epoch {epoch + 1} (stage {stage}): G loss {stats['g_loss']:.3f}, "
                f"D loss {stats['d_loss']:.3f}, targeted success {stats['targeted']:.3f}")
    finally:
        model.requires_grad_(True)
    return G.eval(), history


def _epoch(model, G, D, opt_g, opt_d, images, labels, eps, c, stage, cfg, gen) -> dict:
    G.train(), D.train()
    order = torch.randperm(len(images), generator=gen, device=images.device)
    sums = {"g_loss": 0.0, "d_loss": 0.0, "targeted": 0.0}
    for i in range(0, len(images), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        x, y = images[idx], labels[idx]
        t = random_targets(y, G.num_classes, gen)
        real = targeted_pgd(model, x, t, eps, cfg.pgd_steps, gen) if stage == 1 else x
        fake = adversarial(G, x, t)
        opt_d.zero_grad(set_to_none=True)
        d_loss = discriminator_loss(D, real, fake)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss = generator_loss(model, D, G, x, t, cfg, c)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            hits = (model(fake).argmax(1) == t).float().sum().item()
        sums["g_loss"] += g_loss.item() * len(x)
        sums["d_loss"] += d_loss.item() * len(x)
        sums["targeted"] += hits
    return {k: v / len(images) for k, v in sums.items()}


# ----------------------------------------------------------------------------- cache

def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return h.hexdigest()


def _cache_key(model, eps, num_classes, channels, cfg) -> dict:
    return {"model": fingerprint(model), "eps": eps, "num_classes": num_classes,
            "channels": channels, "config": asdict(cfg)}


def load_cached(path: Path, key: dict, device) -> tuple[Generator, list[dict]] | None:
    """The cached generator if `path` holds one made with this exact key, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged or foreign file: retrain rather than fail the evaluation
        return None
    if not isinstance(state, dict) or state.get("kind") != CACHE_KIND or state.get("key") != key:
        return None
    G = Generator(key["channels"], key["num_classes"], key["eps"], key["config"]["width"])
    G.load_state_dict(state["generator"])
    return G.to(device).eval(), state.get("history", [])


def prepare_generator(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                      num_classes: int, cache_dir: str | Path | None,
                      cfg: AiGanConfig = AiGanConfig(), log: Callable[[str], None] = print
                      ) -> tuple[Generator, dict]:
    """The generator for this model and eps: from RUN_DIR/ai_gan.pt when it matches, else
    trained (and cached). Returns (G, info) with info = cache path, whether trained, history."""
    key = _cache_key(model, eps, num_classes, images.shape[1], cfg)
    path = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    cached = load_cached(path, key, images.device) if path else None
    if cached is not None:
        log(f"ai-gan: generator from cache {path}")
        G, history = cached
        return G, {"cache": str(path), "trained_now": False, "train_seconds": 0.0,
                   "history": history}
    t0 = time.perf_counter()
    G, history = train_generator(model, images, labels, eps, num_classes, cfg, log)
    seconds = time.perf_counter() - t0
    if path is not None:
        state = {"kind": CACHE_KIND, "key": key, "history": history,
                 "generator": {k: v.cpu() for k, v in G.state_dict().items()}}
        atomic_write(path, lambda fh: torch.save(state, fh))
    return G, {"cache": str(path) if path else None, "trained_now": True,
               "train_seconds": seconds, "history": history}


# ----------------------------------------------------------------------------- the attack

class AiGanAttack:
    """An evaluate attack: x + G(x, t) for a seeded random target t != y per image. Counts
    targeted hits and times the generator's forward passes (the attack's whole cost)."""

    def __init__(self, G: Generator):
        self.G = G
        self.n = self.hits = 0
        self.seconds = 0.0

    def __call__(self, model, x, y, eps, gen):
        if abs(eps - self.G.eps) > 1e-12:
            raise DsaraError(f"the AI-GAN generator was trained for eps {self.G.eps}, not {eps}")
        t = random_targets(y, self.G.num_classes, gen)
        start = time.perf_counter()
        with torch.no_grad():
            x_adv = adversarial(self.G, x.float(), t)
        if x_adv.is_cuda:
            torch.cuda.synchronize(x_adv.device)  # kernels run asynchronously: time them all
        self.seconds += time.perf_counter() - start
        with torch.no_grad():
            self.hits += int((model(x_adv).argmax(1) == t).sum())
        self.n += len(x)
        return x_adv.to(x.dtype)

    def summary(self) -> dict:
        return {"targeted_success": self.hits / self.n if self.n else None,
                "images_per_s": self.n / self.seconds if self.seconds else None}
