"""`dsara arch info|sample|derive|list`: inspect architectures and search spaces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arch.archfile import resolve_architecture
from ..arch.baselines import base_width, baseline_name, build_baseline
from ..arch.budget import fit_budget, parse_params
from ..arch.build import build_model
from ..arch.genotype import published
from ..arch.profile import count_macs, count_parameters
from ..arch.sample import write_samples
from ..arch.space import list_spaces, load_space
from ..errors import DsaraError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arch", help="inspect architectures and search spaces")
    asub = p.add_subparsers(dest="arch_command", metavar="ACTION", required=True)
    info = asub.add_parser("info", help="cells, parameters and multiply-adds of an architecture")
    info.add_argument("arch", metavar="FILE_OR_NAME",
                      help="architecture file (.json), built-in cell name (e.g. DARTS_V2, ARNAS) "
                      "or baseline (resnet18, wrn34_10, ...)")
    info.add_argument("--cells", type=int, help="total cells (default: the file's layout)")
    info.add_argument("--channels", "-C", type=int, help="initial channels C (default: the file's); "
                      "for a baseline its first-stage width")
    info.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    info.add_argument("--params", metavar="BUDGET", help="parameter budget, e.g. 1.2M: pick the "
                      "channels C nearest to it (auxiliary head excluded; instead of --channels)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)
    sample = asub.add_parser("sample", help="draw random architectures of a search space",
                             description="N genotypes drawn uniformly from the space (each node: "
                             "two distinct inputs, an op per edge from the space's ops but "
                             "'none'), written as architecture files random-<i>.json with "
                             "provenance source = \"random\". The same seed gives the same files.")
    sample.add_argument("space", metavar="SPACE", help="search space name or TOML path")
    sample.add_argument("--n", type=int, default=1, help="how many distinct genotypes (default 1)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    sample.set_defaults(func=cmd_sample)
    der = asub.add_parser(
        "derive", help="derive a search's cells again from its saved alpha (e.g. P-DARTS skip cap)",
        description="Derive the cells of a finished or interrupted search again from its saved "
        "alpha, without searching again: the DARTS magnitude derivation, optionally with P-DARTS' "
        "cap on skip connections in the normal (non-reduction) cell types (Chen et al., ICCV "
        "2019). Reads checkpoint.pt, or without it the last line of alpha_history.jsonl; the "
        "macro layout is the search's architecture.json's. Prints each cell type's cell, its "
        "parameter-free edges and whether it changed.")
    der.add_argument("run_dir", metavar="RUN_DIR", help="the folder a `dsara search` wrote (an "
                     "experiment unit's <unit>/search, a study trial's artifact folder)")
    der.add_argument("--skip-cap", type=int, metavar="N", help="at most N skip connections per "
                     "normal cell (P-DARTS uses 2; default: no cap)")
    der.add_argument("--out", metavar="FILE.json", help="write the derived architecture file here "
                     "(never over an existing file unless --force)")
    der.add_argument("--force", action="store_true", help="let --out replace an existing file")
    der.add_argument("--json", action="store_true", help="print JSON instead of text")
    der.set_defaults(func=cmd_derive)
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


def baseline_summary(name: str, width: int | None = None, image_size: int = 32) -> dict:
    model = build_baseline(name, width=width)
    return {"name": baseline_name(name), "width": width or base_width(name),
            "parameters": count_parameters(model),
            "macs": count_macs(model, (3, image_size, image_size))}


def cmd_info(args) -> int:
    channels, fit = args.channels, None
    if args.params is not None:
        if channels is not None:
            raise DsaraError("give --params or --channels, not both: the budget picks C")
        fit = fit_budget(args.arch, parse_params(args.params), cells=args.cells)
        channels = fit.value
    if baseline_name(args.arch) is not None and not Path(args.arch).is_file():
        s = baseline_summary(args.arch, channels, args.image_size)
    else:
        s = arch_summary(args.arch, args.cells, channels, args.image_size)
    if fit is not None:
        s["budget"] = fit.budget
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    if "genotype" not in s:
        print(f"baseline      {s['name']} (first stage {s['width']} channels)")
        print(f"parameters    {s['parameters'] / 1e6:.3f} M")
        if fit is not None:
            print(f"budget        {fit.describe()}")
        print(f"multiply-adds {s['macs'] / 1e6:.1f} M per {args.image_size}x{args.image_size} "
              "image")
        return 0
    print(f"architecture  {s['name']}")
    print(f"cells         {s['cells']}  (C = {s['C']}): {' '.join(s['layout'])}")
    print(f"stages        {'; '.join(s['stages'])}")
    print(f"parameters    {s['parameters'] / 1e6:.3f} M (auxiliary head excluded; "
          f"{s['parameters_with_auxiliary'] / 1e6:.3f} M with it)")
    if fit is not None:
        print(f"budget        {fit.describe()}")
    print(f"multiply-adds {s['macs'] / 1e6:.1f} M per {args.image_size}x{args.image_size} image")
    print(f"genotype      {s['genotype']}")
    return 0


def cmd_sample(args) -> int:
    for path in write_samples(args.space, args.n, args.seed, args.out):
        print(path)
    return 0


def cmd_derive(args) -> int:
    from ..arch.archfile import save_architecture
    from ..search.derive import rederive

    out = Path(args.out) if args.out else None
    if out is not None:
        if out.resolve() == (Path(args.run_dir) / "architecture.json").resolve():
            raise DsaraError(f"--out {out} is the search's own architecture file; write the "
                             "derived one elsewhere")
        if out.exists() and not args.force:
            raise DsaraError(f"{out} exists; choose another --out or pass --force to replace it")
    r = rederive(args.run_dir, args.skip_cap)
    cells = {}
    for t, cell in r.architecture.genotype.cells.items():
        old = r.searched.genotype.cells.get(t)
        cells[t] = {"edges": [op for op, _ in cell.edges],
                    "skip_connect": sum(op == "skip_connect" for op, _ in cell.edges),
                    "parameter_free": cell.parameter_free(),
                    "searched_parameter_free": old.parameter_free() if old else None,
                    "changed": cell != old}
    if out is not None:
        save_architecture(r.architecture, out)
    summary = {"run_dir": str(args.run_dir), "epoch": r.epoch, "epochs": r.config.epochs,
               "alpha_from": r.source, "skip_cap": args.skip_cap, "cells": cells,
               "genotype": r.architecture.genotype.to_text(),
               "out": str(out) if out is not None else None}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cap = "no cap" if args.skip_cap is None else f"skip_cap = {args.skip_cap} (normal cells)"
    print(f"search        {args.run_dir}: alpha of epoch {r.epoch} of {r.config.epochs} "
          f"({r.source}), {cap}")
    for t, c in cells.items():
        was = "" if not c["changed"] else (f"  CHANGED (searched: {c['searched_parameter_free']} "
                                           "parameter-free)")
        print(f"{t:<13} {' '.join(c['edges'])}")
        print(f"{'':<13} {c['parameter_free']} of {len(c['edges'])} edges parameter-free, "
              f"{c['skip_connect']} skip{was}")
    print(f"genotype      {summary['genotype']}")
    if out is not None:
        print(f"wrote         {out}")
    return 0


def cmd_list(args) -> int:
    print("built-in cells:", ", ".join(published()))
    for name in list_spaces():
        sp = load_space(name)
        print(f"space {name:<12} {len(sp.ops)} ops, cell types {', '.join(sp.cell_types)}; "
              f"{sp.description}")
    return 0
