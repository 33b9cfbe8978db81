"""TensorBoard scalars of a search or a training run (``--tensorboard``), written with
`torch.utils.tensorboard` (``pip install "dsara[tensorboard]"``).

One point per epoch (the step is the 1-based epoch), the same figures as the run's own logs:

search   accuracy/arch_val_clean, accuracy/arch_val_pgd, accuracy/train_adv, loss/train_adv,
         loss/arch_val_nat, loss/arch_val_adv, lr/weights, speed/images_per_s, gamma/mean
         (stage 2 with the min-norm combination only), alpha_entropy/<cell type> (nats; log(ops) is
         uniform) and param_free/<cell type> (kept parameter-free edges: the DARTS collapse sign)
train    accuracy/val_clean, accuracy/val_pgd, lr, time/epoch_s, loss/<term> (the method's terms)

    tensorboard --logdir RUN_DIR/tensorboard
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DsaraError

INSTALL = 'pip install "dsara[tensorboard]" (tensorboard)'


def search_scalars(r: dict[str, Any]) -> dict[str, float]:
    """Tag -> value of one search epoch record (`dsara.search` metrics.jsonl)."""
    out = {
        "accuracy/arch_val_clean": r["val_clean_acc"], "accuracy/arch_val_pgd": r["val_pgd_acc"],
        "accuracy/train_adv": r["train_acc_adv"], "loss/train_adv": r["train_loss_adv"],
        "loss/arch_val_nat": r["val_loss_nat"], "loss/arch_val_adv": r["val_loss_adv"],
        "lr/weights": r["lr_w"], "speed/images_per_s": r["images_per_s"],
    }
    if r.get("gamma_mean") is not None:
        out["gamma/mean"] = r["gamma_mean"]
    out |= {f"alpha_entropy/{t}": v for t, v in r["alpha_entropy"].items()}
    out |= {f"param_free/{t}": v for t, v in r["param_free"].items()}
    return out


def train_scalars(r: dict[str, Any]) -> dict[str, float]:
    """Tag -> value of one training epoch record (`dsara.train` metrics.json history)."""
    out = {"accuracy/val_clean": r["val_clean"], "accuracy/val_pgd": r["val_robust"],
           "lr": r["lr"], "time/epoch_s": r["time_s"]}
    return out | {f"loss/{k}": v for k, v in r["train"].items()}


class Scalars:
    """Writes one epoch record at a time into a TensorBoard event file in `log_dir`."""

    def __init__(self, log_dir: str | Path, kind: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DsaraError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
        self.to_scalars = {"search": search_scalars, "train": train_scalars}[kind]
        # under torchrun every rank sees the records; rank 0 writes them
        self.writer = SummaryWriter(str(log_dir)) if os.environ.get("RANK", "0") == "0" else None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in self.to_scalars(record).items():
            self.writer.add_scalar(tag, float(value), global_step=int(record["epoch"]))
        self.writer.flush()  # a killed run keeps every finished epoch

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def for_run(flag: str | None, run_dir: str | Path, kind: str) -> Scalars | None:
    """The writer of ``--tensorboard [DIR]`` (DIR default RUN_DIR/tensorboard); None without it."""
    if flag is None:
        return None
    return Scalars(flag or Path(run_dir) / "tensorboard", kind)
