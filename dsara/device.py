"""`--device auto|cpu|cuda|cuda:N`, resolved once, with one-line errors."""

from __future__ import annotations

import torch

from .errors import DsaraError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto = CUDA when available, else CPU; an unknown or unavailable device is a DsaraError."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DsaraError(f"unknown device {str(name)!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DsaraError(f"device {str(name)!r} asked for, but CUDA is not available here; use "
                         "--device cpu or auto")
    return device
