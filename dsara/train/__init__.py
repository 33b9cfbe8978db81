"""Adversarial retraining: objectives (`losses`), checkpoints (`checkpoint`) and the loop (`loop`).

    from dsara.train import TrainConfig, run
    result = run(TrainConfig(arch="resnet18", out="runs/r18", dataset="cifar10", method="trades"))
"""

from .checkpoint import load_checkpoint, load_model, model_spec
from .config import TrainConfig, read_config
from .loop import TrainResult, run
from .losses import AdvParams
from .methods import METHODS

__all__ = ["METHODS", "AdvParams", "TrainConfig", "TrainResult", "load_checkpoint", "load_model",
           "model_spec", "read_config", "run"]
