"""The `robustbench` format: a model card and a model that builds without dsara.

RobustBench (Croce et al., 2021) lists each model with a JSON file in its ``model_info/<dataset>/
<threat model>/`` folder and builds it from a model definition plus a weights file; models take
[0, 1] images and normalize inside where they normalize at all, as dsara's do. The exported folder holds::

    <NAME>.json     the model card, in RobustBench's field names; percentages as strings with two
                    decimals, as their files write them. clean_acc and autoattack_acc come from
                    the run's evaluation.json (`dsara evaluate ... --attacks clean,autoattack`);
                    link, name (the paper title), authors, venue and reported are left to fill.
    model.py        `dsara.export.standalone` + the network's layout: ``load_model()`` needs torch
    <NAME>.pt       the state dict (loads with weights_only=True); the training-only auxiliary
                    head is left out
    provenance.json where the card's figures come from (run, checkpoint epoch, attacks, n)

RobustBench's leaderboard uses AutoAttack on the whole test set; the card's footnote says so when
the evaluation was smaller or AutoAttack was not run (then autoattack_acc is left empty).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..attacks.base import parse_eps
from ..errors import DsaraError
from ..evaluate.file import describe
from ..utils.files import atomic_write, write_json_atomic, write_text_atomic
from ..version import __version__
from . import standalone
from .portable import check_matches
from .source import ExportOptions, Source

THREAT_MODEL = "Linf"  # dsara's attacks are all L-inf
FULL_TEST = {"cifar10": 10000, "cifar100": 10000}  # test images RobustBench evaluates on
BASELINE_LABELS = {"resnet18": "ResNet-18", "preact_resnet18": "PreActResNet-18",
                   "wrn28_10": "WideResNet-28-10", "wrn34_10": "WideResNet-34-10",
                   "wrn34_r": "WideResNet-34-R"}
AUX = "auxiliary_head."  # state-dict prefix of the training-only auxiliary head


def layout(source: Source, weights: str) -> dict[str, Any]:
    """What `standalone.build` needs to rebuild the network."""
    kind = source.spec.get("kind")
    if kind not in ("architecture", "baseline"):
        raise DsaraError(f"{source.run_dir} holds a {kind or 'unknown'} network; RobustBench's "
                         "model.py rebuilds cell networks and baselines only: export it with "
                         "--format torch-export or onnx")
    if source.architecture is not None:
        macro, genotype = source.architecture.macro, source.architecture.genotype
        net = {"kind": "cells", "genotype": genotype.to_dict(), "normalize": macro.normalize,
               "stem_channels": macro.stem_multiplier * macro.C,
               "plan": [[c.cell_type, c.C, c.reduction] for c in macro.cell_plan()],
               "activations": activations(macro)}
    else:
        net = dict(source.model.layout)
    stats = source.spec.get("architecture", {}).get("macro", source.spec)
    return {**net, "num_classes": int(stats["num_classes"]), "mean": list(stats["mean"]),
            "std": list(stats["std"]), "weights": weights}


def activations(macro) -> dict[str, dict[str, Any]]:
    """Per cell type ``{"name": ..., **options}`` (a discrete network has one per type)."""
    options = macro.activation_options or {}
    return {t: {"name": names[0], **options.get(names[0], {})}
            for t, names in macro.activations().items()}


def model_py(net_layout: dict[str, Any], source: Source) -> str:
    code = resources.files("dsara.export").joinpath("standalone.py").read_text(encoding="utf-8")
    header = (f"# Exported by dsara {__version__} from {source.checkpoint}: the network with "
              "nothing but torch.\n")
    return header + code + f"LAYOUT = {json.dumps(net_layout, sort_keys=True)!r}\n"


def eps_text(eps: float) -> str:
    """RobustBench writes eps as ``8/255``; a radius off the 1/255 grid stays a decimal."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def percent(acc: float) -> str:
    return f"{100 * acc:.2f}"


def architecture_label(source: Source) -> str:
    if source.architecture is None:
        return BASELINE_LABELS.get(source.name, source.name)
    m = source.architecture.macro
    return f"{source.name} (DARTS-style cells, {m.cells} cells, {m.C} channels)"


def card(source: Source, evaluation: dict[str, Any]) -> dict[str, Any]:
    acc = evaluation.get("accuracy", {})
    if "clean" not in acc:
        raise DsaraError(f"{source.run_dir}/evaluation.json has no clean accuracy; run dsara "
                         f"evaluate {source.run_dir} --attacks clean,autoattack")
    dataset = evaluation.get("meta", {}).get("dataset") or source.config.get("dataset", "")
    return {
        "link": "", "name": "", "authors": "", "additional_data": False,
        "number_forward_passes": 1, "dataset": dataset, "venue": "",
        "architecture": architecture_label(source), "eps": eps_text(float(evaluation["eps"])),
        "clean_acc": percent(acc["clean"]), "reported": "",
        "autoattack_acc": percent(acc["autoattack"]) if "autoattack" in acc else "",
        "footnote": footnote(dataset, evaluation), "unreliable": False,
        "threat_model": THREAT_MODEL,
    }


def footnote(dataset: str, evaluation: dict[str, Any]) -> str:
    n, acc = int(evaluation.get("n", 0)), evaluation.get("accuracy", {})
    notes = [f"dsara evaluate: {describe(evaluation)}"]  # which evaluation the card reports
    if "autoattack" not in acc:
        notes.append("AutoAttack was not run (dsara evaluate RUN_DIR --attacks clean,autoattack)")
    if n < FULL_TEST.get(dataset, n):
        notes.append(f"evaluated on {n} of the {FULL_TEST[dataset]} test images")
    return "; ".join(notes)


def check_evaluation(source: Source) -> dict[str, Any]:
    ev = source.evaluation
    if ev is None:
        raise DsaraError(f"{source.run_dir} has no evaluation.json; run dsara evaluate "
                         f"{source.run_dir} --attacks clean,autoattack first (the card's "
                         "accuracies come from it)")
    try:
        parse_eps(ev.get("eps", 0))  # an evaluation made before eps > 1 was refused
    except DsaraError as e:
        raise DsaraError(f"{source.run_dir}/evaluation.json: {e} Evaluate it again with the "
                         "right --eps") from None
    epoch = ev.get("meta", {}).get("epoch")
    if source.epoch is not None and epoch != source.epoch:
        raise DsaraError(f"{source.run_dir}/evaluation.json is of epoch {epoch}, the checkpoint "
                         f"of epoch {source.epoch}; evaluate it again")
    return ev


def export_robustbench(source: Source, out: Path, options: ExportOptions) -> list[Path]:
    evaluation = check_evaluation(source)
    name = options.name or source.run_dir.name
    weights = {k: v for k, v in source.model.state_dict().items() if not k.startswith(AUX)}
    net = layout(source, f"{name}.pt")
    rebuilt = standalone.build(net)
    rebuilt.load_state_dict(weights)
    check_matches(source, options, lambda x: rebuilt(x).numpy(), out / "model.py")
    return [
        write_json_atomic(out / f"{name}.json", card(source, evaluation)),
        write_text_atomic(out / "model.py", model_py(net, source)),
        atomic_write(out / f"{name}.pt", lambda fh: torch.save(weights, fh)),
        write_json_atomic(out / "provenance.json", {
            "dsara_version": __version__, "run_dir": str(source.run_dir),
            "checkpoint": str(source.checkpoint), "epoch": source.epoch,
            "evaluation": {k: evaluation.get(k) for k in ("eps", "n", "accuracy", "worst_case")},
            "threat_model": THREAT_MODEL}),
    ]
