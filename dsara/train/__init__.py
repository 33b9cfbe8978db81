"""Adversarial retraining: objectives (`losses`), checkpoints (`checkpoint`) and the loop (`loop`).

    from dsara.train import TrainConfig, run
    result = run(TrainConfig(arch="resnet18", out="runs/r18", dataset="cifar10", method="trades"))
"""

from .checkpoint import load_checkpoint, load_model, model_spec
from .loop import TrainConfig, TrainResult, read_config, run
from .losses import METHODS, AdvParams

__all__ = ["METHODS", "AdvParams", "TrainConfig", "TrainResult", "load_checkpoint", "load_model",
           "model_spec", "read_config", "run"]
