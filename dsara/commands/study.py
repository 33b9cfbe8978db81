"""`dsara study`: persistent Optuna sweeps over DSARA searches (create, run, status, export...)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..study import definition as defs
from ..study import manage, report
from ..study.storage import (
    DEFAULT_STORAGE,
    GRACE_S,
    HEARTBEAT_S,
    RETRY_S,
    mask_url,
    open_storage,
    resolve_url,
)
from ..utils import progress
from ..utils.files import write_text_atomic
from ..utils.signals import sigterm_as_interrupt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="persistent Optuna sweeps of DSARA searches",
                       description="Optuna studies in a SQL database (the only coordinator of "
                       "workers). Storage: --storage, else $DSARA_STORAGE, else "
                       f"{DEFAULT_STORAGE}.")
    cmds = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)
    _register_create(cmds)
    _register_run(cmds)
    _add(cmds, "status", "trials by state and the best or Pareto trials", cmd_status)
    _add(cmds, "list", "studies in the storage", cmd_list, name=False)
    _register_export(cmds)
    _add(cmds, "delete", "delete a study from the storage (run directories stay)", cmd_delete)
    _register_dashboard(cmds)
    _register_report(cmds)


def _register_create(cmds) -> None:
    c = _add(cmds, "create", "create a study from a definition (idempotent)", cmd_create)
    c.add_argument("--from", dest="source", required=True, metavar="DEFINITION",
                   help=f"studies/NAME.toml or a known name ({', '.join(defs.list_definitions())})")
    c.add_argument("--artifact-root", metavar="DIR_OR_S3_URL", help="folder for the trials' run "
                   "directories and Optuna artifact store, shared by all workers, or s3://BUCKET"
                   "[/PREFIX]: the artifact store in S3 (pip install \"dsara[s3]\"; "
                   "AWS_ENDPOINT_URL etc. as usual) and run directories local to each worker, "
                   f"so workers need no shared filesystem (default {manage.DEFAULT_ARTIFACT_ROOT})")


def _register_run(cmds) -> None:
    r = _add(cmds, "run", "run a worker: trials until the study's budget is met", cmd_run)
    r.add_argument("--n-trials", type=int, metavar="N", help="at most N trials by this worker "
                   "(default: until the study has its [budget] n_trials complete trials)")
    r.add_argument("--timeout", type=float, metavar="S", help="start no new trial after S "
                   "seconds")
    r.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, metavar="S",
                   help=f"seconds between heartbeats of a running trial (default {HEARTBEAT_S})")
    r.add_argument("--grace", type=int, default=GRACE_S, metavar="S", help="a running trial "
                   f"without a heartbeat for S seconds is failed and re-queued (default {GRACE_S})")
    r.add_argument("--db-retry", type=float, default=RETRY_S, metavar="S", help="keep retrying "
                   "a database that went away (a restart, a failover) for S seconds while the "
                   f"running trial goes on; then stop (default {RETRY_S}; 0 = fail at once)")
    r.add_argument("--artifact-root", metavar="DIR", help="where this machine sees the study's "
                   "artifact root, if mounted elsewhere; for an s3:// study, where this worker "
                   "keeps its run directories (default: as recorded on the study; "
                   f"{manage.DEFAULT_ARTIFACT_ROOT} for s3://)")
    r.add_argument("--plots", metavar="FILE.html", help="write the HTML report (dsara.plot) at "
                   "the end")
    r.add_argument("--break-lock", action="store_true", help="a trial's run directory is locked "
                   "by a dead process on another host (a shared filesystem): take it over; "
                   "refused if the holder is a live process on this host")


def _register_export(cmds) -> None:
    e = _add(cmds, "export", "write the architecture file of a trial", cmd_export)
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, metavar="N", help="trial number")
    which.add_argument("--best", action="store_true", help="a trial of the Pareto front (or the "
                       "best trial of a single-objective study)")
    e.add_argument("--pick", choices=manage.PICKS, default="balanced", help="with --best: the "
                   "most accurate, the most robust or the highest mean (default balanced)")
    e.add_argument("--out", required=True, type=Path, metavar="FILE.json",
                   help="architecture file to write (builds with dsara.build_model)")


def _register_dashboard(cmds) -> None:
    d = _add(cmds, "dashboard", "serve optuna-dashboard on the study, with its artifact store "
             "(a folder or S3: each trial's files can be downloaded)", cmd_dashboard)
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1: this machine only)")
    d.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    d.add_argument("--artifact-root", metavar="DIR", help="where this machine sees the study's "
                   "artifact root, if mounted elsewhere (default: as recorded on the study)")


def _register_report(cmds) -> None:
    t = _add(cmds, "report", "the trials table and the Pareto front, as CSV or markdown",
             cmd_report)
    t.add_argument("--format", choices=report.FORMATS, default="md",
                   help="md: front + all trials; csv: all trials (default md)")
    t.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (default: print)")


def _add(cmds, command: str, text: str, func, name: bool = True) -> argparse.ArgumentParser:
    p = cmds.add_parser(command, help=text, description=text)
    if name:
        p.add_argument("name", metavar="NAME", help="study name")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. sqlite:///dsara.db "
                   "or postgresql+psycopg://user@host/db (default: $DSARA_STORAGE, else "
                   f"{DEFAULT_STORAGE})")
    p.set_defaults(func=func)
    return p


def cmd_create(args) -> int:
    study, created = manage.create(args.name, args.source, args.storage, args.artifact_root)
    where = mask_url(resolve_url(args.storage))
    root = study.user_attrs.get("artifact_root")
    if created:
        print(f"created study {args.name!r} in {where} from {args.source}; artifacts in {root}")
    else:
        print(f"study {args.name!r} already exists in {where} with the same definition; "
              "nothing to do")
    return 0


def cmd_run(args) -> int:
    from ..study.worker import run_worker

    with sigterm_as_interrupt(), _trials_bar(args.name, args.storage) as log:
        summary = run_worker(args.name, args.storage, args.n_trials, args.timeout,
                             args.heartbeat, args.grace, args.artifact_root, log=log,
                             retry_s=args.db_retry, break_lock=args.break_lock)
    print(f"worker done: {len(summary.completed)} complete, {len(summary.failed)} failed, "
          f"{len(summary.pruned)} pruned; stopped because {summary.stopped}")
    if args.plots:
        from ..plot import write_report

        print(f"report: {write_report(manage.open_study(args.name, args.storage).study, args.plots)}")
    return 1 if summary.failed and not summary.completed else 0


@contextlib.contextmanager
def _trials_bar(name: str, storage: str | None):
    """On a terminal, a bar of the study's complete trials (all workers) against its budget,
    redrawn at each of the worker's lines; the searches inside draw none. Yields the log."""
    study = manage.open_study(name, storage).study
    budget = manage.stored_definition(study).get("budget", {}).get("n_trials", 20)

    def complete() -> int:
        return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))

    with progress.bar(total=budget, desc=f"study {name}", unit="trial") as trials, \
            progress.only_outer():
        def log(line: str) -> None:
            progress.write(line)
            if not trials.disable:  # a terminal: count again (other workers finish trials too)
                trials.n = complete()
                trials.refresh()
        log(f"worker on study {name!r}: {complete()} of {budget} trials complete")
        yield log



def cmd_status(args) -> int:
    study = manage.open_study(args.name, args.storage).study
    d = manage.stored_definition(study)
    counts = report.state_counts(study)
    budget = d.get("budget", {}).get("n_trials", 20)
    print(f"study {args.name!r} in {mask_url(resolve_url(args.storage))}: "
          f"{', '.join(f'{n} {s.lower()}' for s, n in counts.items()) or 'no trials'} "
          f"(budget {budget} complete)")
    print(f"objectives: {', '.join(report.metric_names(study))} (maximize); artifacts: "
          f"{study.user_attrs.get('artifact_root')}")
    title = "Pareto front" if len(study.directions) > 1 else "best trial"
    front = report.front_frame(study)
    print(f"{title}:" if not front.empty else "no complete trials yet")
    if not front.empty:
        print(report.markdown(front.drop(columns=["run_dir"])))
    return 0


def cmd_list(args) -> int:
    st = open_storage(args.storage)
    names = manage.study_names(st)
    if not names:
        print(f"no studies in {mask_url(resolve_url(args.storage))}")
        return 0
    import optuna

    print("study\ttrials\tcomplete\tobjectives\tdefinition")
    for s in optuna.get_all_study_summaries(storage=st):
        study = optuna.load_study(study_name=s.study_name, storage=st)
        d = manage.stored_definition(study) or {}
        metrics = d.get("objective", {}).get("metrics", list(defs.METRICS)) if d else ["?"]
        complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        print(f"{s.study_name}\t{s.n_trials}\t{complete}\t{','.join(metrics)}\t"
              f"{s.user_attrs.get('definition_source', '(not a dsara study)')}")
    return 0


def cmd_export(args) -> int:
    path, trial = manage.export(args.name, args.out, args.storage,
                                args.trial, args.pick)
    values = ", ".join(f"{v:.4f}" for v in trial.values or [])
    print(f"trial {trial.number} ({values}) -> {path}")
    return 0


def cmd_dashboard(args) -> int:
    from ..study.dashboard import run

    run(args.name, args.storage, args.host, args.port, args.artifact_root,
        log=lambda line: print(line, flush=True))
    return 0


def cmd_delete(args) -> int:
    runs = manage.delete(args.name, args.storage)
    kept = f"; its run directories and artifacts stay in {runs}" if runs else ""
    print(f"deleted study {args.name!r} from {mask_url(resolve_url(args.storage))}{kept}")
    return 0


def cmd_report(args) -> int:
    study = manage.open_study(args.name, args.storage).study
    if args.format == "csv":
        text = report.write_table(report.trials_frame(study), "csv", args.out)
    else:
        text = report.report_markdown(study)
        if args.out:
            write_text_atomic(args.out, text)
    if args.out:
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0

