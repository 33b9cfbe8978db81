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


PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", "on", "off")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX) for oneDNN to use."""
    cpu = getattr(torch._C, "_cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast (fp32 master weights) for `precision` on `device`. ``auto`` is bf16 on CUDA
    only: on CPU, bf16 autocast measured slower than fp32 at dsara's sizes even on a CPU with
    AVX-512 BF16 (docs/speed.md, "CPU bf16"), so ``auto`` keeps fp32 there."""
    if precision not in PRECISIONS:
        raise DsaraError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def use_channels_last(setting: str, device: torch.device) -> bool:
    """channels_last memory format for `setting` (auto = on CUDA only; on | off)."""
    if setting not in LAYOUTS:
        raise DsaraError(f"channels_last must be one of {', '.join(LAYOUTS)}, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")
