"""Checkpoints of a training run, and the model spec that rebuilds the exact network they hold.

A checkpoint is a plain dict saved with `torch.save` and read back with ``weights_only=True`` (no
pickled code runs on load)::

    {"kind": "dsara.checkpoint", "format": 1, "dsara_version": ..., "model_spec": {...},
     "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": epochs done,
     "best": {...}, "history": [...], "config": {...}}

The model spec is self-contained: a baseline (name, classes, normalization) or a whole architecture
dict (genotype + macro at the trained size), so evaluation needs no architecture file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch.archfile import Architecture, resolve_architecture
from ..arch.baselines import baseline_name, build_baseline, list_baselines
from ..arch.network import Network
from ..errors import DsaraError
from ..utils.files import atomic_write

KIND = "dsara.checkpoint"
FORMAT = 1


def is_checkpoint_file(arch: str) -> bool:
    """A dsara checkpoint (``.pt``) given as the architecture: training fine-tunes it."""
    return str(arch).endswith(".pt") and Path(arch).is_file()


def model_spec(arch: str, num_classes: int, mean, std, *, cells: int | None = None,
               channels: int | None = None, auxiliary_weight: float | None = None,
               drop_path: float | None = None, width: int | None = None,
               activation: Any = None) -> dict[str, Any]:
    """The spec of `arch` (baseline name, architecture file, built-in cell, or a checkpoint to
    fine-tune: its own network as it was trained) sized for a dataset."""
    if is_checkpoint_file(arch):
        if cells is not None or channels is not None or width is not None or activation:
            raise DsaraError(f"{arch} is a checkpoint: its network is fine-tuned as it is; "
                             "cells, channels, width and activation cannot change it")
        return load_checkpoint(arch)["model_spec"]
    name = baseline_name(arch) if not Path(arch).is_file() else None
    if name is not None:
        if (cells is not None or channels is not None or auxiliary_weight or drop_path
                or activation is not None):
            raise DsaraError(f"{arch} is a baseline with a fixed layout; cells, channels, "
                             "auxiliary weight, drop-path and activation apply to cell-based "
                             "architectures")
        spec = {"kind": "baseline", "name": name, "num_classes": int(num_classes),
                "mean": list(mean), "std": list(std)}
        return spec if width is None else {**spec, "width": int(width)}
    if width is not None:
        raise DsaraError(f"width applies to baselines; {arch} is a cell network: give channels")
    a = _resolve(arch).resized(cells, channels)
    m = a.macro
    macro = dataclasses.replace(
        m, num_classes=int(num_classes), mean=tuple(mean), std=tuple(std),
        auxiliary_weight=m.auxiliary_weight if auxiliary_weight is None else auxiliary_weight,
        drop_path=m.drop_path if drop_path is None else drop_path,
        activation=m.activation if activation is None else activation)
    a = Architecture(a.genotype, macro, a.provenance, a.name or Path(arch).stem)
    return {"kind": "architecture", "name": a.name, "architecture": a.to_dict()}


def _resolve(arch: str) -> Architecture:
    try:
        return resolve_architecture(arch)
    except DsaraError as e:
        if str(e).startswith("unknown built-in cell"):
            raise DsaraError(f"{e}; baselines: {', '.join(list_baselines())}") from None
        raise


def initial_weights(model: nn.Module, arch: str) -> None:
    """A fresh run whose architecture is a checkpoint starts from that checkpoint's weights."""
    if is_checkpoint_file(arch):
        ckpt = load_checkpoint(arch)
        check_same_model(model, ckpt["model"], f"checkpoint {arch}")
        model.load_state_dict(ckpt["model"])


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    if spec.get("kind") == "baseline":
        return build_baseline(spec["name"], spec["num_classes"], spec["mean"], spec["std"],
                              width=spec.get("width"))
    if spec.get("kind") == "architecture":
        a = Architecture.from_dict(spec["architecture"], "checkpoint architecture")
        return Network(a.genotype, a.macro)
    if spec.get("kind") == "compressed":  # dsara compress: the base network, convs replaced
        from ..arch.compressed import build_compressed

        return build_compressed(spec, build_from_spec)
    raise DsaraError(f"checkpoint model spec of unknown kind {spec.get('kind')!r}")


def spec_label(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "compressed":
        return f"{spec.get('method', '?')}-compressed {spec_label(spec.get('base') or {})}"
    if spec.get("kind") == "baseline":
        return f"baseline {spec['name']}" + (f" (width {spec['width']})" if "width" in spec
                                            else "")
    m = spec.get("architecture", {}).get("macro", {})
    return f"architecture {spec.get('name') or '?'} ({m.get('C')} channels, " \
           f"{sum(s['depth'] for s in m.get('stages', [])) + len(m.get('stages', [])) - 1} cells)"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically (temp file, fsync, rename): an interrupted save never leaves a broken file."""
    from ..version import __version__

    full = {"kind": KIND, "format": FORMAT, "dsara_version": __version__, **state}
    return atomic_write(path, lambda fh: torch.save(full, fh))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Load a dsara checkpoint with ``weights_only=True``; every failure is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise DsaraError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a non-torch or damaged file raises almost anything (KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise DsaraError(f"checkpoint {path} is corrupt or not a PyTorch file ({reason[:120]})") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND or "model" not in ckpt:
        raise DsaraError(f"{path} is not a dsara checkpoint (no \"kind\": \"{KIND}\"); "
                         "use a file written by `dsara train`")
    fmt = ckpt.get("format", 0)
    if not isinstance(fmt, int):
        raise DsaraError(f"checkpoint {path} has format {fmt!r}, not a version number")
    if fmt > FORMAT:
        raise DsaraError(f"checkpoint {path} has format {fmt}, newer than this dsara "
                         f"reads ({FORMAT}); upgrade dsara")
    return ckpt


def check_same_model(model: nn.Module, state: dict[str, torch.Tensor], where: str,
                     owner: str = "another architecture") -> None:
    """Refuse weights whose keys or shapes differ from `model`'s, naming the checkpoint's owner."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        what = (f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} mis-shaped "
                f"tensors, e.g. {(missing + extra + shapes)[0]!r}")
        raise DsaraError(f"{where} holds weights of {owner}, not of this model ({what})")


def load_model(ckpt: dict[str, Any], where: str, expected: dict[str, Any] | None = None
               ) -> nn.Module:
    """Rebuild the checkpoint's model and load its weights. With `expected` (the spec the caller
    wants), a checkpoint of another architecture is refused and its owner named."""
    spec = ckpt.get("model_spec") or {}
    owner = spec_label(spec) if spec else "an unknown architecture"
    if expected is not None and _spec_key(expected) != _spec_key(spec):
        raise DsaraError(f"{where} belongs to {owner}, not to {spec_label(expected)}")
    model = build_from_spec(spec)
    check_same_model(model, ckpt["model"], where, owner)
    model.load_state_dict(ckpt["model"])
    return model


def _spec_key(spec: dict[str, Any]) -> Any:
    """What must match for weights to belong to a model: everything but normalization stats."""
    if spec.get("kind") == "baseline":
        return ("baseline", spec.get("name"), spec.get("num_classes"), spec.get("width"))
    if spec.get("kind") == "compressed":
        return ("compressed", _spec_key(spec.get("base") or {}), repr(spec.get("layers")))
    macro = dict(spec.get("architecture", {}).get("macro", {}))
    for k in ("mean", "std", "drop_path", "auxiliary_weight"):
        macro.pop(k, None)
    macro.setdefault("normalize", True)  # a spec written before the key existed normalized
    return ("architecture", repr(spec.get("architecture", {}).get("genotype")), repr(macro))


def checkpoint_path(target: str | Path) -> Path:
    """A run directory's best.pt (else last.pt), or the checkpoint file itself."""
    p = Path(target)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise DsaraError(f"{p} holds no best.pt or last.pt; is it a `dsara train` run directory "
                         "that finished an epoch?")
    if not p.exists():
        raise DsaraError(f"{p} does not exist; give a run directory or a checkpoint file")
    return p


def load_trained(target: str | Path, arch: str | None = None) -> tuple[nn.Module, dict, Path]:
    """(model, checkpoint dict, checkpoint path) for a run directory or checkpoint; with `arch`,
    a checkpoint of another architecture is refused and its owner named."""
    path = checkpoint_path(target)
    ckpt = load_checkpoint(path)
    expected = None
    if arch is not None:
        spec = ckpt.get("model_spec") or {}
        stats = spec.get("architecture", {}).get("macro", spec)
        expected = model_spec(arch, _num_classes(spec), stats.get("mean"), stats.get("std"))
    model = load_model(ckpt, f"checkpoint {path}", expected).eval()
    return model, ckpt, path


def _num_classes(spec: dict[str, Any]) -> int:
    if spec.get("kind") == "baseline":
        return int(spec["num_classes"])
    return int(spec.get("architecture", {}).get("macro", {}).get("num_classes", 10))
