"""MART's semi-supervised extension (Wang et al., ICLR 2020): MART on labeled and pseudo-labelled
images.

The paper's abstract only says that MART has "a semi-supervised extension ... which can leverage
the unlabeled data". How it works here is our **[recon]**, the standard practice of robust
self-training (RST, Carmon et al. 2019) that MART's authors compare with:

1. an unlabeled pool — every image under ``--unlabeled DIR`` (any folder layout; one square size,
   the dataset's) — is pseudo-labelled once per run by a teacher, ``--teacher RUN_DIR``, a `dsara
   train` run on the labeled data (argmax of its clean prediction, eval mode, fp32);
2. every training batch holds ``unlabeled_fraction`` pseudo-labelled images (RST: 0.5) and the rest
   labeled ones, and MART (its boosted CE and misclassification-aware KL, beta) runs on the whole
   batch, each image with its label or pseudo-label.

Pool images that are byte-identical to a test or validation image are dropped before anything
else (a web-scraped pool often contains benchmark images): the run never trains on a test image,
and ``pseudo_labels.json`` in the run directory records how many were dropped. Pseudo-labels with
a teacher confidence below ``min_confidence`` are dropped too (0 = keep all, as RST).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...data.datasets import IMAGE_SUFFIXES, ImageSet, _read_image
from ...errors import DsaraError
from ...utils.files import write_json_atomic
from ..losses import mart
from .base import Method, typed_options
from .extra import loaders, read_teacher


@dataclass(frozen=True)
class MartSSOptions:
    unlabeled_fraction: float = 0.5  # share of each batch that is pseudo-labelled (RST: 0.5)
    min_confidence: float = 0.0  # drop pseudo-labels whose teacher probability is lower [recon]

    def validate(self) -> None:
        if not 0 < self.unlabeled_fraction < 1 or not 0 <= self.min_confidence < 1:
            raise DsaraError("mart-ss: unlabeled_fraction must be in (0, 1) and min_confidence in "
                             f"[0, 1); got {self.unlabeled_fraction}, {self.min_confidence}")


def read_pool(folder: str | Path, size: int) -> torch.Tensor:
    """Every image under `folder` (recursive, sorted paths) as uint8 (N, C, H, W)."""
    root = Path(folder)
    if not root.is_dir():
        raise DsaraError(f"mart-ss: --unlabeled {folder} is not a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DsaraError(f"mart-ss: no images (*{', *'.join(IMAGE_SUFFIXES)}) under {folder}")
    return torch.from_numpy(np.stack([_read_image(p, [size]) for p in paths]))


def _keys(images: torch.Tensor) -> list[bytes]:
    return [bytes(row) for row in images.flatten(1).numpy()]


def drop_known(pool: torch.Tensor, *known: ImageSet) -> tuple[torch.Tensor, int]:
    """`pool` without the images byte-identical to an image of `known` (test, validation)."""
    seen = {k for s in known for k in _keys(s.images)}
    keep = torch.tensor([k not in seen for k in _keys(pool)], dtype=torch.bool)
    return pool[keep], int((~keep).sum())


@torch.no_grad()
def pseudo_label(teacher, pool: torch.Tensor, device, batch: int = 256
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, confidences) of the teacher's clean predictions, in eval mode, fp32."""
    labels, conf = [], []
    for chunk in pool.split(batch):
        p = F.softmax(teacher(chunk.to(device).float().div_(255)).float(), 1)
        c, k = p.max(1)
        labels.append(k.cpu())
        conf.append(c.cpu())
    return torch.cat(labels), torch.cat(conf)


def write_unused_training_images(cfg, count: int, folder: str | Path) -> int:
    """Write (as PNG, labels dropped) up to `count` training images that a run of `cfg` neither
    trains nor validates on — the rest of the training split when ``train_size`` holds part of it
    out — as an unlabeled pool for mart-ss. Returns how many were written."""
    from PIL import Image

    from ..split import load_data

    full = load_data(dataclasses.replace(cfg, train_size=None, val_size=cfg.val_size))[0]
    fit, val, _, _ = load_data(cfg)
    used = {k for s in (fit, val) for k in _keys(s.images)}
    rest = [i for i, k in enumerate(_keys(full.images)) if k not in used][:count]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(rest):
        Image.fromarray(full.images[i].permute(1, 2, 0).numpy()).save(out / f"{n:06d}.png")
    return len(rest)


def setup(cfg, model, fit: ImageSet, val: ImageSet, test: ImageSet, epochs_done: int, log):
    """The mixed loader of labeled and pseudo-labelled images for a mart-ss run."""

    o = typed_options(cfg.method, MartSSOptions, cfg.method_options)
    if not cfg.unlabeled or not cfg.teacher:
        raise DsaraError("mart-ss needs --unlabeled DIR (unlabeled images) and --teacher RUN_DIR "
                         "(a dsara train run on the labeled data that pseudo-labels them)")
    pool, dropped = drop_known(read_pool(cfg.unlabeled, fit.images.shape[-1]), test, val)
    _, teacher = read_teacher(cfg.teacher, cfg, "mart-ss")
    labels, conf = pseudo_label(teacher, pool, cfg.device)
    keep = conf >= o.min_confidence
    if not keep.any():
        raise DsaraError(f"mart-ss: no pool image left (after dropping {dropped} test/validation "
                         f"duplicates and confidences below {o.min_confidence})")
    pseudo = ImageSet(pool[keep], labels[keep])
    summary = {"pool": len(pool) + dropped, "dropped_test_or_val_duplicates": dropped,
               "dropped_low_confidence": int((~keep).sum()), "pseudo_labelled": len(pseudo),
               "per_class": torch.bincount(pseudo.labels,
                                           minlength=int(fit.labels.max()) + 1).tolist()}
    write_json_atomic(Path(cfg.out) / "pseudo_labels.json", summary)
    log(f"mart-ss: {len(pseudo)} pseudo-labelled images ({dropped} test/validation duplicates "
        "dropped)")
    return loaders(cfg, fit, pseudo, o.unlabeled_fraction, "mart-ss")


RECORDS = (
    # MART on labeled + pseudo-labelled batches: MART's own attack
    Method("mart-ss", mart, 0.25, 10, "eval", "normal", options=MartSSOptions, setup=setup),
)
