"""What the methods with more than a batch share: a loader that appends a second set's images to
every batch, and a teacher read from a `dsara train` run directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ...data.datasets import ImageSet
from ...data.loader import Loader
from ...errors import DsaraError
from ..checkpoint import load_checkpoint, load_model


class MixedLoader:
    """Batches of `first` with a batch of `second` appended: ``(cat(x1, x2), cat(y1, y2))``.

    An epoch is an epoch of `first`; `second` is cycled (a fresh shuffle per pass). Every draw is
    a function of (seed, epoch, step) as in `Loader`, so a resumed run sees the same batches."""

    def __init__(self, first: Loader, second: Loader):
        self.first, self.second = first, second
        self.device = first.device

    def __len__(self) -> int:
        return len(self.first)

    def _cycle(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        passes = 0
        while True:  # pass k of epoch e is its own `second` epoch: no two passes share a shuffle
            yield from self.second.epoch(epoch * 100_003 + passes)
            passes += 1

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        extra = self._cycle(epoch)
        for (x1, y1), (x2, y2) in zip(self.first.epoch(epoch), extra):
            yield torch.cat([x1, x2]), torch.cat([y1, y2])


def loader_options(cfg) -> dict:
    """The Loader keyword arguments of a config's training batches: device, layout and the
    augmentation (crop, flip, Cutout)."""
    return {"device": cfg.device, "channels_last": cfg.channels_last == "on",
            "augment": cfg.augment, "pad": cfg.crop_pad, "cutout": cfg.cutout}


def split_batch(batch_size: int, fraction: float, what: str) -> tuple[int, int]:
    """(images of the first set, of the second) per batch of `batch_size`."""
    second = round(fraction * batch_size)
    if not 1 <= second < batch_size:
        raise DsaraError(f"{what}: {fraction} of a batch of {batch_size} leaves no room for both "
                         "sets; use a larger --batch-size or a fraction in (0, 1)")
    return batch_size - second, second


def loaders(cfg, first: ImageSet, second: ImageSet, fraction: float, what: str) -> MixedLoader:
    n1, n2 = split_batch(cfg.batch_size, fraction, what)
    a = Loader(first, n1, seed=cfg.seed, **loader_options(cfg))
    b = Loader(second, n2, seed=cfg.seed + 7919, **loader_options(cfg))
    return MixedLoader(a, b)


def read_teacher(run_dir: str | Path, cfg, what: str) -> tuple[dict, nn.Module]:
    """(the teacher run's checkpoint, its model in eval mode on cfg.device). The teacher must
    come from the same dataset and validation split: otherwise it may have trained on this run's
    validation images, and model selection would see them through it."""
    path = Path(run_dir)
    ckpt_path = path / "best.pt" if path.is_dir() else path
    if not ckpt_path.is_file():
        raise DsaraError(f"{what}: teacher {run_dir} has no best.pt; give the RUN_DIR of a "
                         "finished `dsara train` run")
    ckpt = load_checkpoint(ckpt_path)
    theirs = load_checkpoint(path / "last.pt").get("config", {}) if (path / "last.pt").is_file() \
        else ckpt.get("config", {})
    diff = [k for k in ("dataset", "synthetic", "seed", "val_size")
            if theirs.get(k) != getattr(cfg, k)]
    if diff:
        raise DsaraError(f"{what}: teacher {run_dir} was trained with another {', '.join(diff)}; "
                         "train it on the same dataset, seed and val_size, so that it never saw "
                         "this run's validation images")
    model = load_model(ckpt, f"teacher {ckpt_path}").to(cfg.device).eval()
    return ckpt, model
