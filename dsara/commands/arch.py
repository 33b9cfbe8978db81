"""`dsara arch info|list|show`: inspect architectures and search spaces."""

from __future__ import annotations

import argparse
import json

from ..archfile import resolve_architecture
from ..genotype import published
from ..models import build_model
from ..profile import count_macs, count_parameters
from ..space import list_spaces, load_space


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arch", help="inspect architectures and search spaces")
    asub = p.add_subparsers(dest="arch_command", metavar="ACTION", required=True)
    info = asub.add_parser("info", help="cells, parameters and multiply-adds of an architecture")
    info.add_argument("arch", metavar="FILE_OR_NAME",
                      help="architecture file (.json) or built-in cell name (e.g. DARTS_V2, ARNAS)")
    info.add_argument("--cells", type=int, help="total cells (default: the file's layout)")
    info.add_argument("--channels", "-C", type=int, help="initial channels C (default: the file's)")
    info.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)
    lst = asub.add_parser("list", help="list built-in cells and search spaces")
    lst.set_defaults(func=cmd_list)


def arch_summary(spec, cells=None, channels=None, image_size=32) -> dict:
    arch = resolve_architecture(spec).resized(cells, channels)
    model = build_model(arch)
    m = arch.macro
    return {
        "name": arch.name or str(spec),
        "cells": m.cells,
        "C": m.C,
        "stages": [f"{s.cell_type} x{s.depth} @ {m.stage_channels(s)} ch" for s in m.stages],
        "layout": [("RED" if c.reduction else c.cell_type) for c in m.cell_plan()],
        "parameters": count_parameters(model),
        "parameters_with_auxiliary": count_parameters(model, include_auxiliary=True),
        "macs": count_macs(model, (len(m.mean), image_size, image_size)),
        "genotype": arch.genotype.to_text(),
    }


def cmd_info(args) -> int:
    s = arch_summary(args.arch, args.cells, args.channels, args.image_size)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"architecture  {s['name']}")
    print(f"cells         {s['cells']}  (C = {s['C']}): {' '.join(s['layout'])}")
    print(f"stages        {'; '.join(s['stages'])}")
    print(f"parameters    {s['parameters'] / 1e6:.3f} M (auxiliary head excluded; "
          f"{s['parameters_with_auxiliary'] / 1e6:.3f} M with it)")
    print(f"multiply-adds {s['macs'] / 1e6:.1f} M per {args.image_size}x{args.image_size} image")
    print(f"genotype      {s['genotype']}")
    return 0


def cmd_list(args) -> int:
    print("built-in cells:", ", ".join(published()))
    for name in list_spaces():
        sp = load_space(name)
        print(f"space {name:<12} {len(sp.ops)} ops, cell types {', '.join(sp.cell_types)}; "
              f"{sp.description}")
    return 0
