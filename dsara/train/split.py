"""A training run's data: the fit part, the held-out validation part and the test
split of its dataset.
"""

from __future__ import annotations

from ..data.datasets import SyntheticConfig, load_dataset
from ..data.split import split_train
from ..errors import DsaraError


def load_data(cfg):
    """(train part, validation part, test, info) of a `TrainConfig`'s data fields (dataset,
    data_root, download, synthetic, val_size, train_size, seed); the validation part is held out
    of training."""
    synthetic = SyntheticConfig(**cfg.synthetic) if cfg.synthetic else None
    train, test, info = load_dataset(cfg.dataset, cfg.data_root, cfg.download, synthetic=synthetic)
    if cfg.val_size >= len(train):
        raise DsaraError(f"val_size {cfg.val_size} must be smaller than the training set "
                         f"({len(train)} images)")
    fit, val = split_train(train, arch_fraction=cfg.val_size / len(train), seed=cfg.seed)
    if cfg.train_size is not None and cfg.train_size < len(fit):
        _, fit = split_train(fit, arch_fraction=cfg.train_size / len(fit), seed=cfg.seed)
    return fit, val, test, info
