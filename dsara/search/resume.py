"""What a search checkpoint must agree on to be continued exactly: the device type and RNG state.

A search resumed on another device type is not the search it continues: ``channels_last = auto`` is on only on CUDA, and the random streams
(PGD starts, augmentation) come from that device's generator. `check_device` refuses such a resume
in one line saying what would differ, unless forced. Moving between GPUs (cuda:0 -> cuda:1) is
harmless and allowed.

Only the CPU generator and the generator of the device the search runs on are saved and restored:
restoring every GPU's state fails on a machine with fewer GPUs and means nothing for the others.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..errors import DsaraError
from ..utils.device import use_bf16, use_channels_last
from .config import SearchConfig


def rng_state(device: torch.device) -> dict[str, Any]:
    """The CPU generator and, on CUDA, the generator of `device` (rank 0's, in a DDP search)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_current"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved; on CUDA into `device` only (rank k continues on cuda:k from
    rank 0's stream). An older checkpoint's list of every GPU's state (``cuda``) is ignored."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda_current" in state:
        torch.cuda.set_rng_state(state["cuda_current"].cpu(), device)


def saved_device_type(state: dict[str, Any]) -> str:
    """The device type a checkpoint was written on. Checkpoints from before it was recorded: the
    device their config names, else (``auto``) CUDA if their RNG state holds CUDA generators,
    which it did exactly when CUDA was available, else CPU."""
    if "device_type" in state:
        return str(state["device_type"])
    device = str((state.get("config") or {}).get("device", "auto"))
    if device != "auto":
        return torch.device(device).type
    return "cuda" if "cuda" in (state.get("rng") or {}) else "cpu"


def legacy_precision(state: dict[str, Any], cfg: SearchConfig) -> None:
    """A search begun before ``precision = auto`` meant fp32 everywhere (its config predates
    ``lr_epoch_offset``) continues in what auto meant then: bf16 on CUDA."""
    if ("lr_epoch_offset" not in (state.get("config") or {}) and cfg.precision == "auto"
            and saved_device_type(state) == "cuda"):
        cfg.precision = "bf16"


def effects(cfg: SearchConfig, device_type: str) -> dict[str, str]:
    """The settings `auto` resolves to on a device type."""
    device = torch.device(device_type)
    return {"precision": "bf16" if use_bf16(cfg.precision, device) else "fp32",
            "channels_last": "on" if use_channels_last(cfg.channels_last, device) else "off"}


def check_device(state: dict[str, Any], cfg: SearchConfig, device: torch.device, force: bool,
                 where: str) -> None:
    """Refuse to continue a checkpoint on another device type (one line), or warn when forced."""
    before = saved_device_type(state)
    if before == device.type:
        return
    old, new = effects(cfg, before), effects(cfg, device.type)
    changes = [f"{k} {old[k]} -> {new[k]}" for k in old if old[k] != new[k]]
    changes.append(f"the random streams ({before} -> {device.type} generators)")
    what = (f"{where} was searched on {before} and would continue on {device.type}, which changes "
            f"{', '.join(changes)}: the result would not be the uninterrupted search's")
    if not force:
        raise DsaraError(f"{what}; resume it on {before}, or pass --force to continue anyway")
    print(f"dsara: warning: {what}; continuing because of --force", file=sys.stderr, flush=True)
