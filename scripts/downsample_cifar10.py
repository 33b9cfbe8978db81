"""Write CIFAR-10 at 16x16 (box filter: each pixel the mean of a 2x2 block) as the dataset
``cifar10-16`` -- a different dataset from CIFAR-10, named as such everywhere (as NAS-Bench-201's
ImageNet16 is not ImageNet), cheap enough for thousands of CPU search steps.

    python scripts/downsample_cifar10.py SRC OUT_ROOT          # writes OUT_ROOT/cifar10-16.npz

SRC is either the folder of the JPEG copy (cifar10-jpeg-{train,test}.npz, e.g. ../shared/data),
or a CIFAR-10 root that `dsara --dataset cifar10 --data-root SRC` reads. The output is deterministic
(images in the source's order, integer box means rounded half to even) and is written once: an
existing file is never overwritten. Then: ``dsara ... --dataset cifar10-16 --data-root OUT_ROOT``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from dsara.data.datasets import load_dataset, write_downsampled
from dsara.errors import DsaraError

NAME = "cifar10-16"


def read_jpeg_copy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(NHWC uint8 images, labels) of one cifar10-jpeg-*.npz, in file order."""
    from PIL import Image

    with np.load(path) as z:
        blob, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i in range(len(labels)):
        data = blob[offsets[i]:offsets[i + 1]].tobytes()
        images[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
    return images, labels.astype(np.int64)


def read_source(src: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    jpeg = {split: src / f"cifar10-jpeg-{split}.npz" for split in ("train", "test")}
    if all(p.is_file() for p in jpeg.values()):
        note = ("CIFAR-10 (JPEG copy, quality ~75) box-filtered 2x2 to 16x16 by "
                "scripts/downsample_cifar10.py")
        return {split: read_jpeg_copy(p) for split, p in jpeg.items()}, note
    train, test, _ = load_dataset("cifar10", src)
    hwc = {split: (s.images.permute(0, 2, 3, 1).numpy(), s.labels.numpy())
           for split, s in (("train", train), ("test", test))}
    return hwc, "CIFAR-10 box-filtered 2x2 to 16x16 by scripts/downsample_cifar10.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="the JPEG copy's folder or a CIFAR-10 root")
    p.add_argument("out_root", type=Path, help=f"folder to write {NAME}.npz into")
    args = p.parse_args(argv)
    out = args.out_root / f"{NAME}.npz"
    try:
        if out.exists():  # before minutes of decoding
            raise DsaraError(f"{out} exists; it is written once (delete it to write it again)")
        splits, note = read_source(args.src)
        write_downsampled(out, splits, 2, note)
    except DsaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = {k: len(v[1]) for k, v in splits.items()}
    print(f"wrote {out}: {n['train']} train and {n['test']} test images at 16x16 ({note})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
