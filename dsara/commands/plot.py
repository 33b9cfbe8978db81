"""`dsara plot arch|search|train|evaluation|study` and `dsara report`: figures and a one-page study report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DsaraError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw cells, search curves and study fronts (SVG and PNG)")
    psub = p.add_subparsers(dest="plot_command", metavar="WHAT", required=True)
    arch = psub.add_parser("arch", help="draw every cell type of an architecture")
    arch.add_argument("arch", metavar="FILE_OR_NAME",
                      help="architecture file (.json) or built-in cell name (e.g. DARTS_V2, ARNAS)")
    arch.add_argument("--out", type=Path, required=True, help="directory to write the drawings to")
    arch.add_argument("--engine", choices=("auto", "graphviz", "matplotlib"), default="auto",
                      help="auto (default): graphviz's dot when installed, else matplotlib")
    _formats(arch)
    arch.set_defaults(func=cmd_arch)
    search = psub.add_parser("search", help="α weights, accuracy, γ* and collapse indicators of "
                                            "a search run")
    search.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="directory written by `dsara search` (holds metrics.jsonl)")
    search.add_argument("--out", type=Path, help="directory for the figures (default RUN_DIR/plots)")
    _formats(search)
    search.set_defaults(func=cmd_search)
    train = psub.add_parser("train", help="loss, validation accuracy and learning rate per "
                                          "epoch of a training run, and its evaluations' "
                                          "sanity curves")
    train.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                       help="directory written by `dsara train` (holds metrics.json)")
    train.add_argument("--out", type=Path, help="directory for the figures (default RUN_DIR/plots)")
    _formats(train)
    train.set_defaults(func=cmd_train)
    evaluation = psub.add_parser("evaluation", help="accuracy vs eps and vs attack steps from "
                                                    "`dsara evaluate --sanity`")
    evaluation.add_argument("evaluation", metavar="FILE_OR_RUN_DIR", type=Path,
                            help="an evaluation JSON, or a run directory (its evaluation.json)")
    evaluation.add_argument("--out", type=Path, help="directory for the figures (default: "
                                                     "beside the evaluation)")
    _formats(evaluation)
    evaluation.set_defaults(func=cmd_evaluation)
    study = psub.add_parser("study", help="Pareto front of clean vs PGD accuracy and parameter "
                                          "importances of a study")
    study.add_argument("name", metavar="NAME", help="study name")
    study.add_argument("--out", type=Path, help="directory for the figures (default plots/NAME)")
    _storage(study)
    _formats(study)
    study.set_defaults(func=cmd_study)
    report = sub.add_parser("report", help="one self-contained HTML page about a study, or "
                            "about evaluations and transfer matrices")
    report.add_argument("name", metavar="NAME", nargs="+", help="a study name, or run "
                        "directories / evaluation.json / transfer_matrix.json files (existing "
                        "paths are read as evaluations)")
    report.add_argument("--out", type=Path, help="HTML file to write (default NAME-report.html; "
                        "evaluation-report.html for evaluations)")
    _storage(report)
    report.set_defaults(func=cmd_report)


def _formats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", dest="formats", nargs="+", choices=("svg", "png"),
                   default=["svg", "png"], help="file formats (default: svg png)")


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: $DSARA_STORAGE, else sqlite:///dsara.db)")


def load_study(name: str, storage: str | None):
    from ..study.manage import open_study

    return open_study(name, storage).study


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        print(path)


def cmd_arch(args) -> int:
    from ..plot import draw_architecture

    _print_paths(draw_architecture(args.arch, args.out, args.formats, args.engine))
    return 0


def cmd_search(args) -> int:
    from ..plot import plot_search

    paths = plot_search(args.run_dir, args.out, args.formats)
    if not paths:
        raise DsaraError(f"{args.run_dir} has no epochs recorded yet; nothing to plot")
    _print_paths(paths)
    return 0


def cmd_train(args) -> int:
    from ..plot.train import plot_train

    paths = plot_train(args.run_dir, args.out, args.formats)
    if not paths:
        raise DsaraError(f"{args.run_dir} has no epochs recorded yet; nothing to plot")
    _print_paths(paths)
    return 0


def cmd_evaluation(args) -> int:
    from ..plot.train import plot_sanity

    path = args.evaluation / "evaluation.json" if args.evaluation.is_dir() else args.evaluation
    paths = plot_sanity(path, args.out, args.formats)
    if not paths:
        raise DsaraError(f"{path} holds no sanity curves; run dsara evaluate {path.parent} "
                         "--sanity (evaluations from before the curves were recorded hold text)")
    _print_paths(paths)
    return 0


def cmd_study(args) -> int:
    from ..plot import plot_study

    study = load_study(args.name, args.storage)
    _print_paths(plot_study(study, args.out or Path("plots") / args.name, args.formats))
    return 0


def cmd_report(args) -> int:
    from ..plot import write_report

    if all(Path(n).exists() for n in args.name):
        from ..plot.evaluation import write_evaluation_report

        print(write_evaluation_report(args.name, args.out or Path("evaluation-report.html")))
        return 0
    if len(args.name) > 1:
        missing = next(n for n in args.name if not Path(n).exists())
        raise DsaraError(f"{missing} does not exist; give one study name, or existing run "
                         "directories and report files")
    study = load_study(args.name[0], args.storage)
    print(write_report(study, args.out or Path(f"{args.name[0]}-report.html")))
    return 0
