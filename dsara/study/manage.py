"""Create, load, list, delete studies and export their architectures.

Everything a worker needs is stored on the study itself, so any machine that sees the storage (and
the artifact root, for resuming and reports) can work on it:

    study system attr "dsara:definition"   the study TOML as parsed (plain JSON); a system
                                           attribute, since `optuna studies` prints every user
                                           attribute in each row (studies made before kept it
                                           in user_attrs["definition"], still read)
    study.user_attrs["definition_source"]  the TOML's file name
    study.user_attrs["definition_sha256"]  its hash: `create` with another definition is refused
    study.user_attrs["artifact_root"]      absolute folder holding <study>/trial-<N> run dirs and
                                           the Optuna artifact store <study>/artifacts; or an
                                           s3:// URL: the store (run dirs local to each worker)
    study.metric_names                     the objectives, e.g. ["clean_acc", "pgd_acc"]

and on every complete trial: params (the swept values) and user_attrs "architecture" (an
architecture file's content), "run_dir" (relative to the artifact root), "config" (the resolved
SearchConfig), "metrics" (the last epoch's record and the objective values), "artifacts" (file
name -> Optuna artifact id of the run directory's files and result.json, see `artifacts`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..arch.archfile import Architecture, save_architecture
from ..errors import DsaraError
from .artifacts import is_s3, s3_store
from .definition import StudyDefinition, definition_from_dict, load_definition
from .storage import mask_url, open_storage, resolve_url

DEFAULT_ARTIFACT_ROOT = "runs/studies"
PICKS = ("clean", "robust", "balanced")
DEFINITION_ATTR = "dsara:definition"  # study system attribute holding the parsed TOML


@dataclass
class Opened:
    study: object  # optuna.Study
    definition: StudyDefinition
    artifact_root: Path


def study_names(storage) -> list[str]:
    import optuna

    return sorted(optuna.get_all_study_names(storage=storage))


def check_name(name: str) -> str:
    """Study names become folder names under the artifact root: plain names only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise DsaraError(f"study name {name!r} must be letters, digits, '_', '-' or '.', starting "
                         "with a letter or digit (it names a folder under the artifact root)")
    return name


def create(name: str, source: str | Path, storage: str | None = None,
           artifact_root: str | Path | None = None) -> tuple[object, bool]:
    """(study, created); the same definition again is a no-op, another one an error."""
    import optuna

    check_name(name)
    definition = load_definition(source)
    st = open_storage(storage, create=True)
    if name in study_names(st):
        return _existing(name, definition, st, storage), False
    root = _new_root(name, artifact_root)
    directions = ["maximize"] * len(definition.metrics)
    try:
        study = optuna.create_study(storage=st, study_name=name, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:  # another machine created it just now
        return _existing(name, definition, st, storage), False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(definition.metrics)
    study._storage.set_study_system_attr(study._study_id, DEFINITION_ATTR, definition.to_dict())
    study.set_user_attr("definition_sha256", definition.sha256)
    study.set_user_attr("definition_source", Path(definition.source).name)
    study.set_user_attr("artifact_root", str(root))
    return study, True


def _new_root(name: str, artifact_root: str | Path | None) -> str:
    """The artifact root recorded on a new study: an absolute folder, or an s3:// URL (checked
    to answer)."""
    if is_s3(artifact_root):
        s3_store(str(artifact_root), check=True)
        return str(artifact_root).rstrip("/")
    root = Path(artifact_root or DEFAULT_ARTIFACT_ROOT).expanduser().resolve()
    if (root / name).is_dir() and any((root / name).iterdir()):
        raise DsaraError(f"{root / name} already holds runs of an earlier study named {name!r}; "
                         "remove that folder, choose another name or pass --artifact-root")
    return str(root)


def _existing(name: str, definition: StudyDefinition, st, storage: str | None):
    study = open_study(name, storage, st).study
    if study.user_attrs.get("definition_sha256") != definition.sha256:
        raise DsaraError(f"study {name!r} already exists in {mask_url(resolve_url(storage))} with "
                         f"a different definition than {definition.source}; choose another name, "
                         f"or delete it first (dsara study delete {name})")
    return study


def open_study(name: str, storage: str | None = None, st=None, *, sampler=None,
               pruner=None, artifact_root: str | Path | None = None) -> Opened:
    """Load a study made by `create`, with its stored definition; a clear error otherwise."""
    import optuna

    st = st or open_storage(storage)
    names = study_names(st)
    if name not in names:
        raise DsaraError(f"no study {name!r} in {mask_url(resolve_url(storage))}; studies there: "
                         f"{', '.join(names) or '(none)'}")
    study = optuna.load_study(study_name=name, storage=st, sampler=sampler, pruner=pruner)
    raw = stored_definition(study)
    if not isinstance(raw, dict):
        raise DsaraError(f"study {name!r} has no dsara definition (it was not made by `dsara "
                         "study create`); create a dsara study under another name")
    definition = definition_from_dict(raw, f"study {name!r} definition")
    recorded = study.user_attrs.get("artifact_root")
    if is_s3(recorded):  # the store is the bucket; run directories stay on this machine
        recorded = None
    root = Path(artifact_root or recorded or DEFAULT_ARTIFACT_ROOT)
    return Opened(study, definition, root)


def stored_definition(study) -> dict | None:
    """The parsed TOML that `create` stored on `study` (None for a study not made by dsara)."""
    raw = study._storage.get_study_system_attrs(study._study_id).get(DEFINITION_ATTR)
    return raw if raw is not None else study.user_attrs.get("definition")


def delete(name: str, storage: str | None = None) -> str | None:
    """Delete the study from the storage; its run directories and artifacts stay (where, if
    known: a folder, or the s3:// URL of the artifact store)."""
    import optuna

    opened = open_study(name, storage)
    root = opened.study.user_attrs.get("artifact_root")
    optuna.delete_study(study_name=name, storage=opened.study._storage)
    if not root:
        return None
    return root if is_s3(root) else str(Path(root) / name)


def select_trial(study, number: int | None = None, pick: str = "balanced"):
    """Trial `number`, or the best one: on a Pareto front, `pick` says which end."""
    import optuna

    if number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not trials:
            raise DsaraError(f"study {study.study_name!r} has no trial {number} (trials 0.."
                             f"{len(study.trials) - 1})")
        return trials[0]
    from .report import front

    best = front(study)
    if not best:
        raise DsaraError(f"study {study.study_name!r} has no complete trial yet; run `dsara "
                         f"study run {study.study_name}` first")
    if pick not in PICKS:
        raise DsaraError(f"unknown pick {pick!r}; picks: {', '.join(PICKS)}")
    if len(study.directions) == 1:
        return best[0]
    names = list(study.metric_names or [])
    sign = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]
    index = {"clean": names.index("clean_acc") if "clean_acc" in names else 0,
             "robust": names.index("pgd_acc") if "pgd_acc" in names else 1}

    def score(t):  # balanced: the highest mean of the objectives; ties go to the robust end
        if pick == "balanced":
            return (sum(s * v for s, v in zip(sign, t.values)), sign[index["robust"]]
                    * t.values[index["robust"]])
        i = index[pick]
        return (sign[i] * t.values[i], sum(s * v for s, v in zip(sign, t.values)))
    return max(best, key=score)


def export(name: str, out: str | Path, storage: str | None = None, number: int | None = None,
           pick: str = "balanced") -> tuple[Path, object]:
    """Write the architecture file of a trial (or of the best one); returns (path, trial)."""
    study = open_study(name, storage).study
    trial = select_trial(study, number, pick)
    if "architecture" not in trial.user_attrs:
        raise DsaraError(f"trial {trial.number} of study {name!r} has no architecture (state "
                         f"{trial.state.name}); export a COMPLETE trial, see `dsara study status "
                         f"{name}`")
    arch = Architecture.from_dict(trial.user_attrs["architecture"],
                                  f"trial {trial.number} of study {name!r}")
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    prov = {**arch.provenance, "study": name, "trial": trial.number, "params": trial.params,
            "values": dict(zip(names, trial.values or []))}
    arch = Architecture(arch.genotype, arch.macro, prov, arch.name or f"{name}-trial{trial.number}")
    return save_architecture(arch, out), trial
