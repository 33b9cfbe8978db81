"""Datasets held whole in memory as uint8, a seeded arch-val split, and a device-resident loader.

A split is an `ImageSet`: every image as uint8 ``(N, C, H, W)`` plus int64 labels. Inputs reach the
model as floats in [0, 1]; normalization (`DatasetInfo.mean` / `std`), where the model's layout asks
for it, happens inside the model, so attacks and their eps live in pixel units.

Datasets, by name (`DATASETS`):
- ``cifar10``, ``cifar100``, ``svhn``: through `torchvision.datasets`, downloaded only when asked.
- ``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (png/jpg/jpeg/bmp/webp).
  Classes are the sorted sub-folder names and must be the same in both splits. Images are converted
  to RGB and must all have one square size: nothing is resized, because resampling would silently
  change the pixels an eps-ball is measured in; resize the files beforehand instead.
- ``synthetic``: built in and offline, see `make_synthetic`.
- ``cifar10-16``: CIFAR-10 box-filtered to 16x16 (each output pixel the mean of a 2x2 block), a
  *different dataset* from CIFAR-10 (as NAS-Bench-201's ImageNet16 is from ImageNet): cheap enough
  for thousands of CPU search steps. ``ROOT/cifar10-16.npz``, written once by
  ``scripts/downsample_cifar10.py`` (`write_downsampled`).

`Loader` moves a split to its device once and draws every batch there: shuffling and augmentation
(pad-4 random crop + horizontal flip, optionally Cutout) are tensor ops on that device, and every random draw is a pure
function of ``(seed, epoch, step)``, so a run resumed mid-epoch sees the very same batches.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DsaraError

DATASETS = ["cifar10", "cifar100", "svhn", "imagefolder", "synthetic", "cifar10-16"]


# datasets stored as one ROOT/<name>.npz of NHWC uint8 arrays (`write_downsampled`)
NPZ_DATASETS = {"cifar10-16": 10}


# Per-channel statistics of [0, 1] pixels of the training splits (the usual published values).
_KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """A whole split in memory: uint8 images ``(N, C, H, W)`` (contiguous) and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DsaraError(f"ImageSet images must be uint8 (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DsaraError(f"ImageSet labels must be int64 ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        object.__setattr__(self, "images", self.images.contiguous())  # frozen, but normalise layout

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The samples at `index` (int64 positions or a bool mask), in that order."""
        return ImageSet(self.images[index].contiguous(), self.labels[index])


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset; mean/std are per channel, of [0, 1] pixels."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class SyntheticConfig:
    n_train: int = 2048
    n_test: int = 512
    num_classes: int = 10
    image_size: int = 32  # pixels per side
    channels: int = 3
    noise: float = 0.15  # per-pixel Gaussian noise std, in [0, 1] pixel units
    seed: int = 0  # same seed -> identical bytes

    def __post_init__(self):
        if self.n_train < 1 or self.n_test < 1:
            raise DsaraError(f"synthetic n_train and n_test must be >= 1, got {self.n_train}, {self.n_test}")
        if self.num_classes < 2:
            raise DsaraError(f"synthetic num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 8 or self.channels < 1:
            raise DsaraError(f"synthetic images need image_size >= 8 and channels >= 1, got "
                             f"{self.image_size} and {self.channels}")
        if not self.noise >= 0:
            raise DsaraError(f"synthetic noise must be >= 0 (a pixel std), got {self.noise}")


def _prototypes(cfg: SyntheticConfig, gen: torch.Generator) -> torch.Tensor:
    """One smooth random pattern per class, ``(K, C, S, S)`` in [0.1, 0.9]."""
    grid = max(2, cfg.image_size // 8)  # 4x4 control points at 32 px: smooth, yet distinct per class
    coarse = 0.1 + 0.8 * torch.rand(cfg.num_classes, cfg.channels, grid, grid, generator=gen)
    return F.interpolate(coarse, size=cfg.image_size, mode="bicubic", align_corners=False).clamp(0, 1)


def _synthetic_split(protos: torch.Tensor, n: int, cfg: SyntheticConfig,
                     gen: torch.Generator) -> ImageSet:
    k, _, size, _ = protos.shape
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]  # balanced to within one
    shift = 3  # random translation of up to 3 px, so a fixed pixel is no reliable feature
    padded = F.pad(protos, (shift,) * 4, mode="replicate")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (K, C, 2s+1, 2s+1, S, S), a view
    top, left = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
    x = windows[labels, :, top, left]  # (n, C, S, S): every sample's shifted prototype
    contrast = 0.6 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)  # x0.6..x1.2 around mid-grey
    brightness = 0.16 * torch.rand(n, 1, 1, 1, generator=gen) - 0.08
    x.sub_(0.5).mul_(contrast).add_(0.5 + brightness)
    x.add_(torch.randn(x.shape, generator=gen).mul_(cfg.noise))
    return ImageSet(_to_uint8(x), labels)


def make_synthetic(cfg: SyntheticConfig | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the built-in synthetic dataset: deterministic, offline, learnable.

    Each class k has a prototype P_k: uniform random values in [0.1, 0.9] on a coarse 4x4 grid per
    channel (image_size // 8 per side), bicubically upsampled -- a smooth pattern whose pixels differ
    between classes by about 0.3 on average, far beyond an eps of 8/255. A sample of class k is
    ``0.5 + c * (P_k - 0.5) + b``, contrast c ~ U[0.6, 1.2], brightness b ~ U[-0.08, 0.08],
    translated by up to 3 px (edges replicated), plus i.i.d. N(0, noise^2) per pixel, clamped to
    [0, 1] and rounded to uint8. Contrast, brightness, shift and noise overlap the classes pixel by
    pixel, so no single pixel separates them, while the whole pattern does. Train and test share
    the prototypes and draw samples from separate streams of one generator seeded with `cfg.seed`.
    """
    cfg = cfg or SyntheticConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    protos = _prototypes(cfg, gen)
    train = _synthetic_split(protos, cfg.n_train, cfg, gen)
    test = _synthetic_split(protos, cfg.n_test, cfg, gen)
    return train, test


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).contiguous()  # in place: x is a temporary


def load_dataset(name: str, root: str | Path | None = None, download: bool = False, *,
                 synthetic: SyntheticConfig | None = None) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """(train, test, info) of dataset `name` (one of `DATASETS`).

    cifar10 / cifar100 / svhn are read from `root` through torchvision, fetched there only when
    `download` is true. imagefolder reads ``root/train/<class>/*`` and ``root/test/<class>/*``
    (sorted class names, identical in both; RGB; one square size, never resized). synthetic is built
    in memory from `synthetic` (default `SyntheticConfig()`), ignoring `root`.
    """
    if name not in DATASETS:
        raise DsaraError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if synthetic is not None and name != "synthetic":
        raise DsaraError(f"a synthetic config was given for dataset {name!r}; it only applies to 'synthetic'")
    if name == "synthetic":
        train, test = make_synthetic(synthetic)
        num_classes = (synthetic or SyntheticConfig()).num_classes
    elif name == "imagefolder":
        train, test, num_classes = _load_imagefolder(_need_root(name, root))
    elif name in NPZ_DATASETS:
        train, test = _load_npz(name, _need_root(name, root))
        num_classes = NPZ_DATASETS[name]
    else:
        train, test = _load_torchvision(name, _need_root(name, root), download)
        num_classes = _NUM_CLASSES[name]
    for split, data in (("train", train), ("test", test)):
        if len(data) == 0:
            raise DsaraError(f"dataset {name!r} has an empty {split} split; check --data-root")
    mean, std = _KNOWN_STATS.get(name) or channel_stats(train.images)
    _, c, h, _ = train.images.shape
    return train, test, DatasetInfo(name, num_classes, c, h, tuple(mean), tuple(std))


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DsaraError(f"dataset {name!r} needs a data root; pass --data-root DIR "
                         f"(with --download to fetch cifar10/cifar100/svhn there)")
    return Path(root).expanduser().absolute()  # errors name the folder actually tried


def absolute_root(root: str | None) -> str | None:
    """A --data-root as an absolute path, so a run's config works from any folder."""
    return None if root is None else str(Path(root).expanduser().absolute())


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)`` as [0, 1] pixels."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for part in images.split(chunk):  # float64 copies of a chunk only, not of the whole split
        x = part.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)  # (C, n*H*W)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = images.numel() // c
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    if not download and not all((root / f).is_file() for f in _EXPECTED_FILES[name]):
        raise _not_found(name, root)  # before importing torchvision, which costs seconds
    try:
        return _torchvision_split(name, root, True, download), _torchvision_split(name, root, False, download)
    except (RuntimeError, OSError) as e:
        if name in _CIFAR_FILES and _cifar_files_present(name, root):
            # torchvision checks md5 sums against the original release and calls any other copy
            # "not found or corrupted" (e.g. the re-encoded CIFAR-10 in /work/shared/data). The
            # pickled python format is simple and public, so read the batches ourselves instead.
            return _read_cifar_pickles(name, root, True), _read_cifar_pickles(name, root, False)
        if download:
            raise DsaraError(f"could not download {name} into {root} ({e}); fetch it elsewhere "
                             f"and point --data-root at it") from None
        raise _not_found(name, root) from None


def _not_found(name: str, root: Path) -> DsaraError:
    return DsaraError(f"{name} files not found under {root} (expected {_EXPECTED_FILES[name][0]}, ...); "
                      f"pass --download to fetch them or point --data-root at a folder that holds them")


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> ImageSet:
    import torchvision.datasets as tvd  # lazily: importing torchvision costs about a second

    if name == "svhn":
        try:
            import scipy.io  # noqa: F401  (torchvision's SVHN reads .mat files with scipy)
        except ImportError:
            raise DsaraError("the svhn dataset needs scipy; run `pip install scipy`") from None
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return ImageSet(torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.int64))
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    ds = cls(str(root), train=train, download=download)
    return _from_hwc(ds.data, ds.targets)


def _load_npz(name: str, root: Path) -> tuple[ImageSet, ImageSet]:
    path = root / f"{name}.npz"
    if not path.is_file():
        raise DsaraError(f"dataset {name!r} expects {path}; write it once with "
                         f"scripts/downsample_cifar10.py SRC_DIR {root}")
    with np.load(path, allow_pickle=False) as z:
        return (_from_hwc(z["train_images"], z["train_labels"]),
                _from_hwc(z["test_images"], z["test_labels"]))


def box_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """NHWC uint8 images shrunk by `factor` per side, each output pixel the rounded mean of a
    factor x factor block (a box filter: no ringing, no pixels invented)."""
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise DsaraError(f"images of {h}x{w} do not divide into {factor}x{factor} blocks")
    blocks = images.reshape(n, h // factor, factor, w // factor, factor, c).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def write_downsampled(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], factor: int,
                      note: str) -> Path:
    """Write ``{split: (NHWC uint8 images, labels)}`` box-downsampled by `factor` to the file `out`
    (atomically); refuses to overwrite an existing file."""
    if out.exists():
        raise DsaraError(f"{out} exists; it is written once (delete it to write it again)")
    arrays = {"note": np.array(note)}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"] = box_downsample(images, factor)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(out)
    return out


def _from_hwc(data: np.ndarray, labels) -> ImageSet:
    images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)  # (N,H,W,C) -> (N,C,H,W)
    return ImageSet(images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64))


# folder, train files, test files, label key: the layout of the python versions of CIFAR.
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


_EXPECTED_FILES = {name: [f"{folder}/{f}" for f in train + test]
                   for name, (folder, train, test, _) in _CIFAR_FILES.items()}


_EXPECTED_FILES["svhn"] = ["train_32x32.mat", "test_32x32.mat"]


def _cifar_files_present(name: str, root: Path) -> bool:
    return all((root / f).is_file() for f in _EXPECTED_FILES[name])


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a data file cannot run code."""

    # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_cifar_pickles(name: str, root: Path, train: bool) -> ImageSet:
    """The same arrays torchvision would return, read from the pickled batches in file order."""
    folder, train_files, test_files, label_key = _CIFAR_FILES[name]
    data, labels = [], []
    for file in train_files if train else test_files:
        path = root / folder / file
        try:
            with open(path, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            data.append(np.asarray(batch[b"data"] if b"data" in batch else batch["data"],
                                   dtype=np.uint8))
            labels.extend(batch[label_key] if label_key in batch else batch[label_key.decode()])
        except Exception as e:  # unreadable, not a pickle, or not a dict of the CIFAR arrays
            raise DsaraError(f"cannot read {path} ({type(e).__name__}: {e}); re-create or "
                             "re-download the dataset") from None
    x = np.concatenate(data).reshape(-1, 3, 32, 32)  # rows of 3072 = channel planes of 32x32
    return ImageSet(torch.from_numpy(x).contiguous(), torch.as_tensor(labels, dtype=torch.int64))


def _class_dirs(root: Path, split: str) -> list[str]:
    base = root / split
    if not base.is_dir():
        raise DsaraError(f"imagefolder needs {base}/<class>/<images>; no {split}/ folder under {root}")
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_imagefolder(root: Path) -> tuple[ImageSet, ImageSet, int]:
    if not root.is_dir():
        raise DsaraError(f"data root {root} does not exist; point --data-root at a folder "
                         f"holding train/<class>/ and test/<class>/")
    classes, test_classes = _class_dirs(root, "train"), _class_dirs(root, "test")
    if classes != test_classes:
        only = sorted(set(classes) ^ set(test_classes))
        raise DsaraError(f"imagefolder {root}: train/ and test/ have different class folders "
                         f"(differ in: {', '.join(only) or 'order'}); make both hold the same classes")
    size: list[int] = []  # the size of the first image read; every other must match it
    train = _read_folder_split(root / "train", classes, size)
    test = _read_folder_split(root / "test", classes, size)
    return train, test, len(classes)


def _read_folder_split(base: Path, classes: list[str], size: list[int]) -> ImageSet:
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted(p for p in (base / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            images.append(_read_image(path, size))
            labels.append(label)
    if not images:
        raise DsaraError(f"no images (*{', *'.join(IMAGE_SUFFIXES)}) in {base}/<class>/; check --data-root")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def _read_image(path: Path, size: list[int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # OSError, PIL's DecompressionBombError: one line either way
        raise DsaraError(f"cannot read image {path}: {e}") from None
    h, w, _ = rgb.shape
    if h != w or (size and size[0] != h):
        want = f"{size[0]}x{size[0]}" if size else "square"
        raise DsaraError(f"image {path} is {w}x{h}, expected {want}; imagefolder never resizes, so "
                         f"resize the files to one square size first")
    size[:] = [h]
    return rgb.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
