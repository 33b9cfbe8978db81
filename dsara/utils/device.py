"""`--device auto|cpu|cuda|cuda:N`, resolved once, with one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import DsaraError


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
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# Whether `precision = auto` may mean bf16 on CUDA. It stays False until a measurement on a GPU shows
# bf16's alpha drift within the seed-to-seed drift (scripts/precision_check.py, run by
# scripts/gpu_check.sh; docs/speed.md): the authors searched and trained in fp32, and on a CPU bf16
# flipped the derived genotype. bf16 is one flag away (`--precision bf16`), the documented fast path.
AUTO_BF16_SHOWN = False


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast (fp32 master weights) for `precision` on `device`.

    ``auto`` is fp32 on every device until bf16 is shown to leave results within seed-to-seed
    noise on a GPU (`AUTO_BF16_SHOWN`); then it becomes bf16 on CUDA only (on a CPU with AVX-512
    BF16 the search step measured no faster in bf16, docs/speed.md "CPU bf16")."""
    if precision not in PRECISIONS:
        raise DsaraError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and AUTO_BF16_SHOWN
                                   and device.type == "cuda")


def use_channels_last(setting: str, device: torch.device) -> bool:
    """channels_last memory format for `setting` (auto = on CUDA only; on | off)."""
    if setting not in LAYOUTS:
        raise DsaraError(f"channels_last must be one of {', '.join(LAYOUTS)}, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


@contextlib.contextmanager
def fp32_math() -> Iterator[None]:
    """Full fp32 matmuls and convolutions (TF32 off) while the block runs; the previous settings
    are restored afterwards. cuDNN allows TF32 convolutions by default on Ampere and newer GPUs,
    which round their inputs to 10 mantissa bits: not the fp32 an evaluation reports.

    PyTorch refuses to read the legacy flags (``allow_tf32``) once the newer ``fp32_precision``
    ones were set, and the other way round; so this uses whichever API is in use."""
    b = torch.backends
    try:
        saved = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32
    except RuntimeError:  # the fp32_precision API is in use
        saved = None
    if saved is not None:
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    else:
        new = b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision
        b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        if saved is not None:
            b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
        else:
            b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = new
