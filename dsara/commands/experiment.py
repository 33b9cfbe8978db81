"""`dsara experiment`: compare architecture sources at equal parameters over seeds (create, run,
status, report, delete)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..experiment import runner
from ..experiment.definition import list_experiments
from ..study.storage import DEFAULT_STORAGE, GRACE_S, HEARTBEAT_S, mask_url, resolve_url
from ..utils.signals import sigterm_as_interrupt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="searched vs random vs published cells at equal "
                       "parameters, over seeds",
                       description="Declarative experiments (experiments/*.toml): every (source, "
                       "seed) unit is searched if needed, retrained at the parameter budget with "
                       "one recipe and evaluated on the test split; stored as an Optuna study "
                       f"(--storage, else $DSARA_STORAGE, else {DEFAULT_STORAGE}), so any number "
                       "of workers share it and a killed run resumes.")
    cmds = p.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND", required=True)
    c = _add(cmds, "create", "create an experiment from a definition (idempotent)", cmd_create)
    c.add_argument("--from", dest="source", required=True, metavar="DEFINITION",
                   help=f"experiments/NAME.toml or a known name ({', '.join(list_experiments())})")
    c.add_argument("--artifact-root", metavar="DIR", help="folder for the units' run directories "
                   f"(default {runner.DEFAULT_ARTIFACT_ROOT})")
    _data_root(c)
    r = _add(cmds, "run", "run a worker: units until none is left", cmd_run)
    _data_root(r)
    r.add_argument("--max-units", type=int, metavar="N", help="stop after N units")
    r.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, metavar="S",
                   help=f"seconds between heartbeats of a running unit (default {HEARTBEAT_S})")
    r.add_argument("--grace", type=int, default=GRACE_S, metavar="S", help="a running unit "
                   f"without a heartbeat for S seconds is re-queued (default {GRACE_S})")
    _add(cmds, "status", "every unit's state", cmd_status)
    t = _add(cmds, "report", "the result table, searched minus best random, the scatter plot",
             cmd_report)
    t.add_argument("--format", choices=("md", "html"), default="md", help="markdown or one "
                   "self-contained HTML page (default md)")
    t.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (default: print md)")
    t.add_argument("--figures", type=Path, metavar="DIR", help="also save the scatter plot "
                   "(SVG + PNG) into DIR")
    _add(cmds, "delete", "delete an experiment from the storage (its runs stay)", cmd_delete)


def _add(cmds, command: str, text: str, func) -> argparse.ArgumentParser:
    p = cmds.add_parser(command, help=text, description=text)
    p.add_argument("name", metavar="NAME", help="experiment name")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: "
                   f"$DSARA_STORAGE, else {DEFAULT_STORAGE})")
    p.set_defaults(func=func)
    return p


def _data_root(p) -> None:
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (default: "
                   f"${runner.DATA_ROOT_ENV}; run: as given at create)")


def cmd_create(args) -> int:
    study, created = runner.create(args.name, args.source, args.storage, args.artifact_root,
                                   args.data_root)
    where = mask_url(resolve_url(args.storage))
    n = len(runner.open_experiment(args.name, args.storage).experiment.units())
    if created:
        print(f"created experiment {args.name!r} ({n} units) in {where}; runs in "
              f"{study.user_attrs['artifact_root']}")
    else:
        print(f"experiment {args.name!r} already exists in {where} with the same definition")
    return 0


def cmd_run(args) -> int:
    with sigterm_as_interrupt():
        summary = runner.run_worker(args.name, args.storage, data_root=args.data_root,
                                    heartbeat_s=args.heartbeat, grace_s=args.grace,
                                    max_units=args.max_units,
                                    log=lambda line: print(line, flush=True))
    print(f"worker done: {len(summary.completed)} units complete, {len(summary.failed)} failed; "
          f"{summary.stopped}")
    return 1 if summary.failed and not summary.completed else 0


def cmd_status(args) -> int:
    opened = runner.open_experiment(args.name, args.storage)
    states = runner.unit_states(opened.study, opened.experiment)
    for key, state in states.items():
        print(f"{state:<9} {key}")
    done = sum(s == "COMPLETE" for s in states.values())
    print(f"{done} of {len(states)} units complete; runs in {opened.artifact_root}")
    return 0


def cmd_report(args) -> int:
    from ..experiment.report import report_markdown, results

    opened = runner.open_experiment(args.name, args.storage)
    rows = results(opened.study)
    states = runner.unit_states(opened.study, opened.experiment)
    order = list(opened.experiment.sources)
    if args.figures:
        from ..plot.experiment import plot_experiment

        for path in plot_experiment(rows, order, args.figures, args.name):
            print(path)
    if args.format == "html":
        from ..plot.experiment import write_html

        out = args.out or Path(f"{args.name}.html")
        print(write_html(args.name, opened.experiment, rows, states, out))
        return 0
    text = report_markdown(args.name, opened.experiment, rows, states)
    if args.out:
        from ..utils.files import write_text_atomic

        print(write_text_atomic(args.out, text))
    else:
        sys.stdout.write(text)
    return 0


def cmd_delete(args) -> int:
    import optuna

    opened = runner.open_experiment(args.name, args.storage)
    optuna.delete_study(study_name=args.name, storage=opened.study._storage)
    print(f"deleted experiment {args.name!r}; its runs stay in "
          f"{opened.artifact_root / args.name}")
    return 0
