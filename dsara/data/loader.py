"""The in-memory batch loader: seeded shuffling, crop/flip augmentation and cutout
on whole batches, optional channels_last, data-parallel sharding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..errors import DsaraError
from .datasets import ImageSet


def _crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample windows ``x[b, :, top[b]:top[b]+h, left[b]:left[b]+w]`` as two gathers, no loop."""
    b, c, _, wp = x.shape
    rows = (top.view(b, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(b, c, h, wp)
    x = x.gather(2, rows)  # (B, C, h, Wp)
    cols = (left.view(b, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(b, c, h, w)
    return x.gather(3, cols)  # (B, C, h, w)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, *, pad: int = 4) -> torch.Tensor:
    """Pad `x` (float, (B, C, H, W)) by `pad` zeros, crop back to H x W at random, flip half of it.

    Vectorised over the batch on `x`'s device; `generator` (on that device) fixes every draw.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    out = _crop(F.pad(x, (pad,) * 4), offsets[0], offsets[1], h, w)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


def cutout_batch(x: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017, as in the DARTS code): per image, zero a `length` x `length`
    square centred on a uniformly drawn pixel, clipped at the border; vectorised, on `x`'s device."""
    b, _, h, w = x.shape
    centre = torch.stack([torch.randint(0, n, (b,), generator=generator, device=x.device) for n in (h, w)])
    lo, hi = centre - length // 2, centre + length // 2  # (2, B): rows [lo, hi), clipped by the image
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= lo[0, :, None]) & (rows < hi[0, :, None])  # (B, H)
    in_cols = (cols >= lo[1, :, None]) & (cols < hi[1, :, None])  # (B, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(hole, 0.0)


def _derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers, so RNG streams of (seed, epoch, step) never overlap."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Loader:
    """Batches of an `ImageSet` as float images in [0, 1] and int64 labels, both on `device`.

    The split is copied to `device` once, as uint8; shuffling (a permutation per epoch) and
    augmentation (`augment_batch`) run there, with no host round trip per step. Every random draw is
    a pure function of ``(seed, epoch, step)`` on a given device type, so ``epoch(e, start_step=k)``
    yields exactly the tail of ``epoch(e)`` and a resumed run sees the same batches.

    Data-parallel: with ``world_size`` N, `batch_size` is the global batch and rank r gets the r-th
    of N equal slices of it, after the global batch's shuffling and augmentation; so the N shards
    together are exactly the batch a single process sees.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool = True, augment: bool = False,
                 drop_last: bool = True, device: str | torch.device = "cpu", seed: int = 0,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1, pad: int = 4,
                 cutout: int = 0):
        if not 0 <= rank < world_size or batch_size % world_size:
            raise DsaraError(f"the global batch_size ({batch_size}) must split evenly over "
                             f"{world_size} processes (rank {rank}); use a multiple of {world_size}")
        if not 1 <= batch_size <= len(data):
            raise DsaraError(f"batch_size must be between 1 and the split size ({len(data)} images), "
                             f"got {batch_size}; lower --batch-size or use more data")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # uint8: 4x less memory and transfer than float
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.rank, self.world_size = rank, world_size
        self.pad, self.cutout = pad, cutout  # crop padding and Cutout side, pixels

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_derived_seed(self.seed, *parts))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, starting at batch `start_step` (0 <= start_step <= len(self))."""
        if not 0 <= start_step <= len(self):
            raise DsaraError(f"start_step must be in [0, {len(self)}] (batches per epoch), got {start_step}")
        n = len(self.labels)
        order = (torch.randperm(n, generator=self._generator(epoch, -1), device=self.device)
                 if self.shuffle else torch.arange(n, device=self.device))
        for step in range(start_step, len(self)):
            yield self._batch(order[step * self.batch_size:(step + 1) * self.batch_size], epoch, step)

    def _batch(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx].float().div_(255)  # (B, C, H, W) in [0, 1]
        if self.augment:
            x = augment_batch(x, self._generator(epoch, step), pad=self.pad)
        if self.cutout > 0:  # its own stream: the crops and flips stay those of a run without it
            x = cutout_batch(x, self.cutout, self._generator(epoch, step, 1))
        y = self.labels[idx]
        if self.world_size > 1:  # this rank's slice of the global batch
            x, y = x.tensor_split(self.world_size)[self.rank], y.tensor_split(self.world_size)[self.rank]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
