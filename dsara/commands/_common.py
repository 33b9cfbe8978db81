"""Options and helpers that several commands share.
"""

from __future__ import annotations

import argparse

from ..data.datasets import SyntheticConfig, load_dataset
from ..data.split import stratified_subset
from ..errors import DsaraError

S = argparse.SUPPRESS  # an option not given stays out of the namespace (the config decides)

SYNTHETIC = [
    ("--synthetic-train", "n_train", "synthetic training images (default 2048)"),
    ("--synthetic-test", "n_test", "synthetic test images (default 512)"),
    ("--synthetic-size", "image_size", "synthetic image side in pixels (default 32)"),
    ("--synthetic-classes", "num_classes", "synthetic classes (default 10)"),
]


def add_synthetic_options(p: argparse.ArgumentParser) -> None:
    """--synthetic-train/-test/-size/-classes: the one way to size the built-in data, in every
    command that reads it (search, train, evaluate)."""
    for flag, field, text in SYNTHETIC:
        p.add_argument(flag, dest=f"synthetic.{field}", type=int, default=S, metavar="N",
                       help=text)


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    add_synthetic_options(p)
    p.add_argument("--download", action="store_true", default=S,
                   help="let torchvision download the dataset into --data-root")


def test_split(args, config: dict):
    """The test split the run used, unless flags name another dataset."""
    name = args.dataset or config.get("dataset", "cifar10")
    root = args.data_root or config.get("data_root")
    synthetic = None
    if name == "synthetic":
        fields = dict(config.get("synthetic") or {})
        fields |= {k.split(".", 1)[1]: v for k, v in vars(args).items()
                   if k.startswith("synthetic.")}
        synthetic = SyntheticConfig(**fields)
    _, test, info = load_dataset(name, root, getattr(args, "download", False),
                                 synthetic=synthetic)
    if args.limit is not None and args.limit < 1:
        raise DsaraError(f"--limit must be >= 1 test image, got {args.limit}")
    test, subset = stratified_subset(test, args.limit, args.subset_seed)
    return test, info, subset
