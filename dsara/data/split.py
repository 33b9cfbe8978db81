"""Seeded, class-stratified splits and subsets of an `ImageSet`.
"""

from __future__ import annotations

import torch

from ..errors import DsaraError
from .datasets import ImageSet


def split_train(train: ImageSet, arch_fraction: float = 0.5, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(weight_train, arch_val): a seeded, class-stratified split of the training set.

    Of every class, round(count * arch_fraction) samples go to arch_val, the rest to weight_train
    (DARTS / DSARA: half each). Both parts keep the original order of the samples.
    """
    if not 0 < arch_fraction < 1:
        raise DsaraError(f"arch_fraction must be in (0, 1), got {arch_fraction}; 0.5 splits the "
                         f"training set in halves")
    gen = torch.Generator().manual_seed(seed)
    to_arch = torch.zeros(len(train), dtype=torch.bool)
    for cls in torch.unique(train.labels).tolist():  # sorted, so the draws do not depend on order
        members = torch.nonzero(train.labels == cls).flatten()
        picked = members[torch.randperm(len(members), generator=gen)]
        to_arch[picked[: round(len(members) * arch_fraction)]] = True
    if to_arch.all() or not to_arch.any():
        raise DsaraError(f"arch_fraction {arch_fraction} of {len(train)} training images leaves one "
                         f"part empty; use more data or a fraction nearer 0.5")
    return train.subset(~to_arch), train.subset(to_arch)


def stratified_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted positions of a seeded, class-stratified sample of exactly `n` of `labels`.

    Each class gets its share of n in proportion to its count (largest remainder, ties to the
    smaller class label), drawn uniformly within the class; so the first N of a class-sorted split
    (imagefolder, a CIFAR copy unpacked by class) can never stand in for the whole split."""
    total = len(labels)
    if not 1 <= n <= total:
        raise DsaraError(f"a subset needs 1 to {total} images, got {n}")
    classes, counts = torch.unique(labels.cpu(), return_counts=True)  # sorted classes
    quota = counts.double() * n / total
    take = quota.floor().long()
    order = torch.argsort(quota - take, descending=True, stable=True)
    take[order[: n - int(take.sum())]] += 1
    gen = torch.Generator().manual_seed(seed)
    picked = [torch.nonzero(labels.cpu() == c).flatten()[torch.randperm(int(k0), generator=gen)[:k]]
              for c, k0, k in zip(classes.tolist(), counts.tolist(), take.tolist(), strict=True)]
    return torch.cat(picked).sort().values


def stratified_subset(data: ImageSet, n: int | None, seed: int = 0) -> tuple[ImageSet, dict]:
    """(`n` images of `data` drawn by `stratified_indices`, a record of which), or all of it when
    n is None or not smaller than the split. The record goes into reports (evaluation.json)."""
    if n is None or n >= len(data):
        return data, {"selection": "all", "n": len(data), "of": len(data)}
    index = stratified_indices(data.labels, max(n, 1), seed)
    per_class = torch.bincount(data.labels[index].cpu())
    record = {"selection": "class-stratified", "n": len(index), "of": len(data), "seed": seed,
              "per_class": {str(c): int(k) for c, k in enumerate(per_class.tolist()) if k},
              "indices": index.tolist()}
    return data.subset(index), record
