"""`dsara export`: a trained network as a torch.export program, ONNX, a RobustBench folder or the
authors' genotype text."""

from __future__ import annotations

import argparse

from ..export import EXPORTERS, ExportOptions, check_format, export
from ..export.source import ONNX_OPSET

FORMATS = {
    "torch-export": "a torch.export program (.pt2): torch.export.load(PATH).module()(images)",
    "onnx": f"an ONNX model at opset {ONNX_OPSET} (needs pip install \"dsara[export]\")",
    "robustbench": "a folder: RobustBench model card (JSON), model.py needing only torch, weights",
    "genotype": "the authors' Genotype(...) text (DARTS / ARNAS code bases)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained network (torch.export, ONNX, RobustBench, genotype)",
        description="Export a trained network. Models take images in [0, 1] of shape "
        "(batch, channels, H, W) with any batch size, normalize inside and return logits (eval "
        "mode, fp32); each exported file is read back and checked against the dsara model "
        "(max logit difference 1e-4). Formats: " + "; ".join(
            f"{k}: {v}" for k, v in FORMATS.items()))
    p.add_argument("target", metavar="RUN_DIR", help="a `dsara train` run directory (best.pt, "
                   "else last.pt) or checkpoint; for --format genotype also an architecture "
                   "file, a `dsara search` run directory or a built-in cell name")
    p.add_argument("--format", required=True, metavar="FORMAT", help=" | ".join(EXPORTERS))
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (a folder for "
                   "robustbench)")
    p.add_argument("--image-size", type=int, metavar="PIXELS", help="input side the program is "
                   "traced at (default: the size the run trained on)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default "
                   f"{ONNX_OPSET})")
    p.add_argument("--name", help="robustbench: the model's name, naming the card and weights "
                   "files (default: the run directory's name)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    fmt = check_format(args.format)
    options = ExportOptions(image_size=args.image_size, opset=args.opset, name=args.name)
    for path in export(args.target, fmt, args.out, options):
        print(f"wrote {path}")
    return 0
