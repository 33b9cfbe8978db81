"""Properties of dsara.data: synthetic data, the arch-val split, the device loader, imagefolder, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from dsara.data.datasets import (
    DATASETS,
    ImageSet,
    SyntheticConfig,
    channel_stats,
    load_dataset,
    make_synthetic,
)
from dsara.data.loader import Loader, augment_batch
from dsara.data.split import split_train, stratified_subset
from dsara.errors import DsaraError

SMALL = SyntheticConfig(n_train=300, n_test=100, num_classes=5, image_size=16, seed=3)


@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic", synthetic=SMALL)


def _toy(n: int = 23, classes: int = 3, size: int = 8) -> ImageSet:
    images = torch.arange(n * 3 * size * size).remainder(251).to(torch.uint8).view(n, 3, size, size)
    return ImageSet(images, torch.arange(n) % classes)


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_seeded():
    a, b = make_synthetic(SMALL), make_synthetic(SMALL)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    other = make_synthetic(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not torch.equal(a[0].images, other[0].images)


def test_synthetic_shapes_dtypes_balance_and_info(small):
    train, test, info = small
    assert train.images.shape == (300, 3, 16, 16) and test.images.shape == (100, 3, 16, 16)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous()
    assert torch.bincount(train.labels).tolist() == [60] * 5
    assert torch.bincount(test.labels).tolist() == [20] * 5
    assert (info.name, info.num_classes, info.channels, info.image_size) == ("synthetic", 5, 3, 16)
    mean, std = channel_stats(train.images)
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
    assert all(0.3 < m < 0.7 for m in info.mean) and all(0.1 < s < 0.4 for s in info.std)


def test_synthetic_classes_far_apart_beyond_eps_but_not_one_pixel_separable():
    train, _ = make_synthetic(SyntheticConfig(n_train=500, num_classes=10, seed=0))
    x = train.images.float().div(255).flatten(1)  # (N, C*H*W)
    means = torch.stack([x[train.labels == k].mean(0) for k in range(10)])  # (K, D)
    gaps = (means[:, None] - means[None]).abs().mean(-1)  # mean per-pixel gap of class means
    assert gaps[~torch.eye(10, dtype=torch.bool)].min() > 3 * 8 / 255  # well beyond an eps of 8/255
    # nearest class mean over the whole image: easy
    whole = torch.cdist(x, means).argmin(1)
    assert (whole == train.labels).float().mean() > 0.9
    # nearest class mean on the single best pixel: far from it
    nearest = (x.T[:, :, None] - means.T[:, None, :]).abs().argmin(-1)  # (D, N)
    best_pixel = (nearest == train.labels).float().mean(1).max()
    assert best_pixel < 0.5


def test_synthetic_is_fast():
    import time

    start = time.process_time()  # this process's CPU time: other work on the machine adds none
    make_synthetic(SyntheticConfig())
    # About 0.25 s of CPU (one torch thread); the bound leaves room, not for a per-sample loop.
    assert time.process_time() - start < 3.0


# ----------------------------------------------------------------------------- split

def test_split_is_disjoint_complete_stratified_and_seeded():
    data = ImageSet(torch.zeros(103, 1, 4, 4, dtype=torch.uint8), torch.arange(103) % 4)
    data = ImageSet(torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1).expand(103, 1, 4, 4), data.labels)
    w, a = split_train(data, 0.5, seed=1)
    ids_w, ids_a = w.images[:, 0, 0, 0].long(), a.images[:, 0, 0, 0].long()  # pixel value = index
    assert set(ids_w.tolist()).isdisjoint(ids_a.tolist())
    assert sorted(ids_w.tolist() + ids_a.tolist()) == list(range(103))
    assert torch.equal(data.labels[ids_a], a.labels) and torch.equal(data.labels[ids_w], w.labels)
    per_class = torch.bincount(a.labels, minlength=4)
    total = torch.bincount(data.labels, minlength=4)
    assert ((per_class - total / 2).abs() <= 0.5).all()
    assert torch.equal(split_train(data, 0.5, seed=1)[1].images, a.images)
    assert not torch.equal(split_train(data, 0.5, seed=2)[1].images, a.images)
    assert len(split_train(data, 0.25, seed=1)[1]) == sum(round(int(t) * 0.25) for t in total)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_split_rejects_fraction_outside_open_interval(fraction):
    with pytest.raises(DsaraError, match=r"arch_fraction must be in \(0, 1\)"):
        split_train(_toy(), fraction)


# ----------------------------------------------------------------------------- loader

def test_loader_shapes_dtypes_ranges_and_length():
    data = _toy(23)
    loader = Loader(data, 5, augment=True, drop_last=True, channels_last=True)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 4
    for x, y in batches:
        assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert len(Loader(data, 5, drop_last=False)) == 5


def test_loader_covers_each_sample_once_per_epoch_and_reshuffles():
    data = _toy(23)
    loader = Loader(data, 5, shuffle=True, drop_last=False, seed=7)
    first = torch.cat([x for x, _ in loader.epoch(0)])
    keys = lambda x: sorted(map(tuple, (x * 255).round().flatten(1).tolist()))  # noqa: E731
    assert first.shape[0] == 23
    assert keys(first) == keys(data.images.float() / 255)
    second = torch.cat([x for x, _ in loader.epoch(1)])
    assert not torch.equal(first, second)  # a fresh permutation per epoch
    plain = torch.cat([x for x, _ in Loader(data, 5, shuffle=False, drop_last=False).epoch(0)])
    assert torch.equal(plain, data.images.float() / 255)


def test_loader_keeps_images_with_their_labels():
    train, _, _ = load_dataset("synthetic", synthetic=SMALL)
    lookup = {tuple(img.flatten().tolist()): int(lab) for img, lab in zip(train.images, train.labels, strict=True)}
    for x, y in Loader(train, 32, seed=1).epoch(3):
        keys = (x * 255).round().to(torch.uint8).flatten(1).tolist()
        assert [lookup[tuple(k)] for k in keys] == y.tolist()


@pytest.mark.parametrize("augment", [False, True])
def test_loader_resumes_mid_epoch_identically(augment):
    loader = Loader(_toy(40), 6, augment=augment, seed=11)
    full = list(loader.epoch(2))
    tail = list(Loader(_toy(40), 6, augment=augment, seed=11).epoch(2, start_step=3))
    assert len(tail) == len(full) - 3
    for (x, y), (xr, yr) in zip(full[3:], tail, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    assert list(loader.epoch(2, start_step=len(loader))) == []
    other = list(Loader(_toy(40), 6, augment=augment, seed=12).epoch(2))
    assert not torch.equal(full[0][0], other[0][0])


def test_augment_stays_in_range_changes_images_and_is_seeded():
    x = torch.rand(64, 3, 8, 8) * 0.9 + 0.05
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    changed = (out != x).flatten(1).any(1).float().mean()
    assert changed > 0.8  # only unshifted, unflipped samples (about 1 in 162) stay equal
    assert (out == 0).any()  # zero padding shows up at shifted borders
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))


def test_augment_is_exactly_a_crop_of_the_padded_image_or_its_mirror():
    x = torch.rand(32, 2, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(5))
    padded = F.pad(x, (4, 4, 4, 4))
    flips = 0
    for b in range(32):  # the test may loop; the code under test may not
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(9) for j in range(9)]
        plain = any(torch.equal(out[b], w) for w in windows)
        mirrored = any(torch.equal(out[b], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 4 <= flips <= 28  # about half are flipped


class _CountTorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_augment_is_vectorised_not_a_python_loop():
    counts = []
    for batch in (2, 64):  # a per-sample loop would make the number of tensor ops grow with B
        with _CountTorchCalls() as mode:
            augment_batch(torch.rand(batch, 3, 8, 8), torch.Generator().manual_seed(0))
        counts.append(mode.calls)
    assert counts[0] == counts[1]


def test_loader_step_is_vectorised():
    counts = []
    for batch in (2, 16):
        loader = Loader(_toy(40), batch, augment=True)
        batches = loader.epoch(0)
        next(batches)  # the per-epoch permutation is drawn here, outside the counted step
        with _CountTorchCalls() as mode:
            next(batches)
        counts.append(mode.calls)
    assert counts[0] == counts[1]


# ----------------------------------------------------------------------------- imagefolder

def _write_tree(root, sizes=None, classes=("cat", "dog", "emu"), per_class=3, size=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                s = (sizes or {}).get((split, cls, i), size)
                pixels = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
                written[(split, cls, i)] = pixels
    return written


def test_imagefolder_round_trip(tmp_path):
    written = _write_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train, test, info = load_dataset("imagefolder", root=tmp_path)
    assert (info.num_classes, info.channels, info.image_size) == (3, 3, 8)
    assert len(train) == len(test) == 9
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = torch.from_numpy(written[("train", "dog", 2)]).permute(2, 0, 1)
    assert torch.equal(train.images[5], expected)
    assert info.mean == pytest.approx(channel_stats(train.images)[0])


def test_imagefolder_rejects_mixed_sizes(tmp_path):
    _write_tree(tmp_path, sizes={("test", "dog", 1): 10})
    with pytest.raises(DsaraError, match=r"1\.png is 10x10, expected 8x8.*never resizes"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_rejects_mismatched_classes(tmp_path):
    _write_tree(tmp_path)
    (tmp_path / "test" / "fox").mkdir()
    with pytest.raises(DsaraError, match="different class folders.*fox"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_rejects_missing_split_and_root(tmp_path):
    _write_tree(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DsaraError, match="no test/ folder"):
        load_dataset("imagefolder", root=tmp_path)
    with pytest.raises(DsaraError, match="does not exist.*--data-root"):
        load_dataset("imagefolder", root=tmp_path / "nowhere")


def test_imagefolder_rejects_empty(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    with pytest.raises(DsaraError, match="no images"):
        load_dataset("imagefolder", root=tmp_path)


# ----------------------------------------------------------------------------- errors

def test_dataset_names_and_lazy_torchvision():
    assert DATASETS == ["cifar10", "cifar100", "svhn", "imagefolder", "synthetic", "cifar10-16"]
    with pytest.raises(DsaraError, match="unknown dataset 'mnist'; known datasets: cifar10, cifar100"):
        load_dataset("mnist")
    if "torchvision" not in sys.modules:  # only meaningful when nothing else imported it first
        load_dataset("synthetic", synthetic=SMALL)
        assert "torchvision" not in sys.modules


def test_missing_downsampled_file_names_the_script(tmp_path):
    with pytest.raises(DsaraError, match=r"expects .*cifar10-16\.npz; write it once with "
                                         r"scripts/downsample_cifar10\.py"):
        load_dataset("cifar10-16", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_files_say_what_to_do(tmp_path, name):
    with pytest.raises(DsaraError, match=f"{name} files not found under .*--download.*--data-root"):
        load_dataset(name, root=tmp_path)
    with pytest.raises(DsaraError, match="needs a data root; pass --data-root"):
        load_dataset(name)


def _torchvision_refuses(name, root, train, download):
    # What torchvision's CIFAR10 raises for files whose md5 sums differ from the original release
    # (checked by hand on the re-encoded copy); faking it keeps the slow torchvision import out.
    raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")


def test_cifar_pickles_that_torchvision_refuses_are_read(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setattr("dsara.data.datasets._torchvision_split", _torchvision_refuses)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        batches.append((data, labels))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    train, test, info = load_dataset("cifar10", root=tmp_path)
    assert len(train) == 20 and len(test) == 4 and info.mean == (0.4914, 0.4822, 0.4465)
    assert torch.equal(train.images[4], torch.from_numpy(batches[1][0][0]).view(3, 32, 32))
    assert test.labels.tolist() == batches[5][1]


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setattr("dsara.data.datasets._torchvision_split", _torchvision_refuses)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": print, b"labels": []}, f)
    with pytest.raises(DsaraError, match="refusing to unpickle builtins.print"):
        load_dataset("cifar10", root=tmp_path)


def test_bad_loader_and_synthetic_arguments():
    data = _toy(10)
    with pytest.raises(DsaraError, match=r"batch_size .*split size \(10 images\), got 11"):
        Loader(data, 11)
    with pytest.raises(DsaraError, match=r"split size \(10 images\), got 0"):
        Loader(data, 0)
    with pytest.raises(DsaraError, match=r"start_step must be in \[0, 2\]"):
        next(Loader(data, 5).epoch(0, start_step=3))
    with pytest.raises(DsaraError, match="num_classes must be >= 2"):
        SyntheticConfig(num_classes=1)
    with pytest.raises(DsaraError, match="only applies to 'synthetic'"):
        load_dataset("cifar10", root=".", synthetic=SMALL)


# ----------------------------------------------------------------------------- learnability

@pytest.fixture
def one_thread():
    # Tiny convolutions gain nothing from threads, and on a busy 2-core machine two spinning
    # threads make this test 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_cnn_learns_synthetic_well_above_chance(one_thread):
    torch.manual_seed(0)
    train, test, _ = load_dataset("synthetic", synthetic=SyntheticConfig(
        n_train=500, n_test=200, num_classes=10, image_size=16, seed=0))
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = Loader(train, 50, augment=True)
    for epoch in range(20):  # 200 steps, about 2 s of CPU
        for x, y in loader.epoch(epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        x, y = next(Loader(test, len(test), shuffle=False).epoch(0))
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1; about 0.98 after these 200 steps


# ----------------------------------------------------------------------------- stratified subsets

def _class_sorted(counts):
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    return ImageSet(torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8), labels)


def test_stratified_subset_of_a_class_sorted_split():
    data = _class_sorted([50, 30, 20])  # the first 20 images would all be class 0
    part, record = stratified_subset(data, 20, seed=3)
    assert len(part) == 20 and record["per_class"] == {"0": 10, "1": 6, "2": 4}
    assert record["selection"] == "class-stratified" and record["of"] == 100
    index = torch.tensor(record["indices"])
    assert torch.equal(part.labels, data.labels[index]) and torch.equal(index, index.sort().values)
    assert stratified_subset(data, 20, seed=3)[1] == record  # seeded
    assert stratified_subset(data, 20, seed=4)[1]["indices"] != record["indices"]


def test_stratified_subset_sizes_are_exact():
    data = _class_sorted([7, 7, 7])
    for n in range(1, 21):
        part, record = stratified_subset(data, n)
        counts = sorted(record["per_class"].values(), reverse=True)
        assert len(part) == n == sum(counts) and counts[0] - counts[-1] <= 1
    assert stratified_subset(data, 21)[1] == {"selection": "all", "n": 21, "of": 21}
    assert stratified_subset(data, None)[0] is data
