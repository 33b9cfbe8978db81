"""Portable programs: `torch.export` (.pt2) and ONNX, both loadable without dsara.

Both are traced from the eval-mode fp32 network with a dynamic batch dimension (1 to
`MAX_BATCH` images) and a fixed image size (the run's, or ``--image-size``); the normalization is
part of the graph, so the input is images in [0, 1]. After writing, each file is read back and run
on a batch of another size than the traced one; its logits must match the dsara model's within
`TOLERANCE`, or the export fails instead of leaving a file that silently disagrees.

ONNX goes through PyTorch's torch.export-based exporter (``dynamo=True``) at opset `ONNX_OPSET`;
it needs ``pip install "dsara[export]"`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DsaraError
from ..utils.files import atomic_write
from ..version import __version__
from .source import ExportOptions, Source

MAX_BATCH = 65536  # upper end of the dynamic batch dimension
TOLERANCE = 1e-4  # max |logit difference| between the exported file and the dsara model
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the trace
INSTALL = 'pip install "dsara[export]" (onnx, onnxscript, onnxruntime)'


class Portable(nn.Module):
    """``images -> logits`` with one positional input: the signature an exported program keeps.
    The training-only auxiliary head is left out: an exported program stores every parameter of
    its module, used or not (in a small cell network the head holds most of the weights)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = without_auxiliary(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def without_auxiliary(model: nn.Module) -> nn.Module:
    """`model`, or a copy of it without its auxiliary head (which eval mode never runs)."""
    if getattr(model, "auxiliary_head", None) is None:
        return model
    model = copy.deepcopy(model)
    model.auxiliary_head, model.has_auxiliary, model.aux_index = None, False, -1
    return model


def images(source: Source, options: ExportOptions, batch: int, seed: int) -> torch.Tensor:
    size = source.image_size(options)
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, source.channels, size, size, generator=gen)


def dynamic_batch() -> dict:
    return {"images": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def trace(source: Source, options: ExportOptions) -> torch.export.ExportedProgram:
    model = Portable(source.model).eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, (images(source, options, TRACE_BATCH, 0),),
                                       dynamic_shapes=dynamic_batch())
    except Exception as e:
        raise DsaraError(f"torch.export could not trace {source.name}: {_first_line(e)}") from None


def check_matches(source: Source, options: ExportOptions, run: Callable, what: Path) -> float:
    """Max |logit difference| of `run` against the dsara model; fails above `TOLERANCE`."""
    x = images(source, options, CHECK_BATCH, 1)
    with torch.no_grad():
        expected = source.model(x).numpy()
        got = np.asarray(run(x))
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise DsaraError(f"{what} returned shape {got.shape}, expected {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise DsaraError(f"{what} differs from the dsara model by {diff:.2e} (> {TOLERANCE:g}) "
                         "in its logits; the export is not faithful, report this as a bug")
    return diff


def export_torch(source: Source, out: Path, options: ExportOptions) -> list[Path]:
    """A `torch.export` program: ``torch.export.load(out).module()(images) -> logits``."""
    program = trace(source, options)
    atomic_write(out, lambda fh: torch.export.save(program, fh))
    loaded = torch.export.load(str(out)).module()
    check_matches(source, options, lambda x: loaded(x).numpy(), out)
    return [out]


def export_onnx(source: Source, out: Path, options: ExportOptions) -> list[Path]:
    """An ONNX model (opset ``options.opset``): input ``images``, output ``logits``."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise DsaraError(f"the onnx format needs onnx and onnxscript: {INSTALL}") from None
    proto = _onnx_proto(source, options)
    onnx.helper.set_model_props(proto, {
        **{p.key: p.value for p in proto.metadata_props}, "dsara_version": __version__,
        "dsara_model": source.name, "input": "images in [0, 1], (batch, channels, H, W), float32",
        "output": "logits, (batch, classes)"})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise DsaraError(f"the ONNX model of {source.name} fails onnx.checker: "
                         f"{_first_line(e)}") from None
    atomic_write(out, lambda fh: fh.write(proto.SerializeToString()))
    check_matches(source, options, _onnxruntime(out), out)
    return [out]


def _onnx_proto(source: Source, options: ExportOptions):
    model = Portable(source.model).eval()
    try:
        program = torch.onnx.export(
            model, (images(source, options, TRACE_BATCH, 0),), dynamo=True,
            opset_version=options.opset, dynamic_shapes=dynamic_batch(), input_names=["images"],
            output_names=["logits"], external_data=False, verbose=False)
    except Exception as e:
        raise DsaraError(f"torch.onnx could not export {source.name} at opset {options.opset}: "
                         f"{_first_line(e)}") from None
    return program.model_proto


def _onnxruntime(path: Path) -> Callable:
    try:
        import onnxruntime
    except ImportError:
        raise DsaraError(f"checking the ONNX file needs onnxruntime: {INSTALL}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x.numpy()})[0]


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
