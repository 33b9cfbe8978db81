"""One unit of an experiment: get the architecture (search + derive, draw, or look up), retrain it
at the parameter budget with the experiment's recipe, evaluate it on the test split.

Everything lives in the unit's folder ``<artifact root>/<experiment>/<source>/seed-<s>[-cell-<i>]``::

    search/             the search run directory (searching sources)
    architecture.json   the drawn genotype (random sources)
    train/              the `dsara train` run directory (config.json, last.pt, best.pt, ...)
    evaluation.json     the test-split figures

Each phase resumes from its own files, so a unit whose worker died continues where it stopped: a
search from its last epoch, a retrain from its last epoch, a finished evaluation is not redone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..arch.ops import PARAMETER_FREE
from ..attacks.base import parse_eps
from ..data.datasets import ImageSet
from ..data.split import stratified_subset
from ..utils.files import write_json_atomic
from .definition import Experiment, Source, Unit

Log = Callable[[str], None]


def run_unit(exp: Experiment, unit: Unit, unit_dir: Path, data_root: str | None, log: Log,
             taken_over=None) -> dict[str, Any]:
    """The unit's figures (accuracies in [0, 1], parameters, seconds per phase, diagnostics)."""
    from ..study.objective import stop_when

    source = exp.sources[unit.source]
    stop = stop_when(taken_over)
    arch, diagnostics, search_s = architecture(exp, source, unit, unit_dir, data_root, log, stop)
    stop({"epoch": "search"})
    train_dir = unit_dir / "train"
    resumed = _epochs_done(train_dir)
    cfg = exp.train_config(arch, unit.seed, train_dir, data_root)
    from ..train import run as train_run

    result = train_run(cfg, log=lambda line: log(f"  {unit.key} train {line}"))
    stop({"epoch": "retrain"})
    evaluation = evaluate_unit(exp, train_dir, unit_dir / "evaluation.json", data_root, log)
    return {
        "unit": unit.key, "source": source.name, "kind": source.kind, "seed": unit.seed,
        "index": unit.index, "arch": str(arch), "accuracy": evaluation["accuracy"],
        "worst_case": evaluation["worst_case"], "n_test": evaluation["n"],
        "autoattack_n": evaluation.get("autoattack_n", 0),
        "autoattack_subset_clean": evaluation.get("autoattack_subset_clean"),
        # worst case per sample over every attack and AutoAttack, on the AutoAttack subset
        "worst_case_autoattack": evaluation.get("worst_case_autoattack"),
        "per_sample": evaluation.get("per_sample", {}),  # attack -> "0110..." (paired bootstrap)
        "params": evaluation["params"],
        "device": evaluation["device"], "search": diagnostics, "resumed_train_epoch": resumed,
        "seconds": {"search": search_s, "train": sum(r["time_s"] for r in result.history),
                    "evaluate": sum(evaluation["seconds"].values())},
    }


def architecture(exp: Experiment, source: Source, unit: Unit, unit_dir: Path,
                 data_root: str | None, log: Log, stop) -> tuple[str, dict, float]:
    """(what `dsara train` gets as ARCH, search diagnostics, search seconds)."""
    if source.kind == "published":
        return source.cell, {}, 0.0
    if source.kind == "baseline":
        return source.model, {}, 0.0
    if source.kind == "random":
        from ..arch.archfile import save_architecture
        from ..arch.sample import sample_architectures

        space = exp.search.get("space", "dsara")
        arch = sample_architectures(space, source.count, unit.seed)[unit.index]
        return str(save_architecture(arch, unit_dir / "architecture.json")), {}, 0.0
    if source.reuse:
        return rederive(exp, source, unit, unit_dir, data_root, log)
    return search(exp, source, unit, unit_dir / "search", data_root, log, stop)


def rederive(exp: Experiment, source: Source, unit: Unit, unit_dir: Path, data_root: str | None,
             log: Log) -> tuple[str, dict, float]:
    """Derive the finished search of `source.reuse` at this seed again with this source's
    derivation options (skip_cap, or selection = "pt" on the searched supernet): the same
    search, cells derived another way. Returns the derivation's seconds as search seconds."""
    from ..arch.archfile import Architecture, load_architecture, save_architecture
    from ..arch.space import load_space
    from ..arch.supernet import build_supernet
    from ..search.config import from_saved

    run_dir = unit_dir.parents[1] / source.reuse / f"seed-{unit.seed}" / "search"
    ckpt = run_dir / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
    cfg = from_saved(state["config"], str(ckpt)) if state else None
    if cfg is None or state["epoch"] < cfg.epochs:
        raise RuntimeError(f"{unit.key} derives the search of {source.reuse}/s{unit.seed} again, "
                           "which has not finished yet; it runs once that unit has searched")
    skip_cap = source.search.get("skip_cap")
    searched = load_architecture(run_dir / "architecture.json")
    space = load_space(cfg.space, cfg.space_overrides)
    t0 = time.perf_counter()
    if source.search.get("selection", "magnitude") == "pt":
        from ..search.perturb import select_for

        # the whole searched supernet (weights too), with this source's derivation options
        derive_cfg = exp.search_config(source, unit.seed, run_dir, data_root)
        m = searched.macro
        net = build_supernet(space, m.num_classes, m.mean, m.std, cfg.partial_k)
        net.load_state_dict(state["model"])
        log(f"  {unit.key}: {source.reuse}/s{unit.seed}'s supernet, cells chosen by "
            f"perturbation (DARTS-PT reconstruction, {derive_cfg.pt_images} images)")
        genotype, record = select_for(derive_cfg, net)
        write_json_atomic(unit_dir / "pt_selection.json", record)
        how = {"selection": "pt", "pt_images": derive_cfg.pt_images,
               "pt_measure": derive_cfg.pt_measure}
    else:
        from ..search.derive import rederive as derive_again

        genotype = derive_again(run_dir, skip_cap).architecture.genotype
        how = {"skip_cap": skip_cap}
        log(f"  {unit.key}: {source.reuse}/s{unit.seed}'s alpha derived with skip_cap = "
            f"{skip_cap}")
    seconds = time.perf_counter() - t0
    prov = {**searched.provenance, "rederived": {"from": str(run_dir), **how}}
    arch = Architecture(genotype, searched.macro, prov).validate()
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    final["param_free"] = {t: c.parameter_free() for t, c in genotype.cells.items()}
    return (str(save_architecture(arch, unit_dir / "architecture.json")),
            diagnostics(run_dir, final), seconds)


def search(exp, source, unit, run_dir: Path, data_root, log, stop) -> tuple[str, dict, float]:
    from ..search import run as search_run
    from ..study.objective import prepare_run_dir

    cfg = exp.search_config(source, unit.seed, run_dir, data_root)
    resume = prepare_run_dir(run_dir, retry=True)
    log(f"  {unit.key} search{' (resuming)' if resume else ''}: {source.kind}, "
        f"{cfg.epochs} epochs, stage 1 = {cfg.stage1}")
    result = search_run(cfg, callbacks=[stop], resume=resume, progress=False)
    seconds = sum(r["epoch_time_s"] for r in result.history)
    return str(run_dir / "architecture.json"), diagnostics(run_dir, result.final), seconds


def diagnostics(run_dir: Path, final: dict[str, Any]) -> dict[str, Any]:
    """Why a searched cell may not beat random ones: how far alpha moved from its start, how much
    softmax weight sits on parameter-free ops, the kept parameter-free edges, gamma*."""
    lines = (run_dir / "alpha_history.jsonl").read_text(encoding="utf-8").splitlines()
    first, last = json.loads(lines[0])["alphas"], json.loads(lines[-1])["alphas"]
    ops = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    space_ops = _space_ops(ops)
    free = [i for i, op in enumerate(space_ops) if op in PARAMETER_FREE]
    out = {"alpha_shift": {}, "free_weight": {}, "param_free": final.get("param_free"),
           "gamma_mean": final.get("gamma_mean"), "alpha_entropy": final.get("alpha_entropy")}
    for t in last:
        a0, a1 = torch.tensor(first[t]), torch.tensor(last[t])  # (edges, ops)
        out["alpha_shift"][t] = float((a1 - a0).abs().max())
        w = torch.softmax(a1, dim=-1)
        out["free_weight"][t] = float(w[:, free].sum(-1).mean()) if free else 0.0
    out["uniform_free_weight"] = len(free) / len(space_ops)
    return out


def _space_ops(config: dict[str, Any]) -> list[str]:
    from ..arch.space import load_space

    return load_space(config["space"], config.get("space_overrides") or {}).ops


def _epochs_done(train_dir: Path) -> int:
    metrics = train_dir / "metrics.json"
    if not metrics.is_file():
        return 0
    return len(json.loads(metrics.read_text(encoding="utf-8")).get("history", []))


# ----------------------------------------------------------------------------- evaluation

def worst_with_autoattack(evaluation: dict[str, Any], aa_record: dict[str, Any]) -> float:
    """Worst case per sample over every attack and AutoAttack, on the AutoAttack subset: an image
    counts if it withstood all of the subset's attacks and AutoAttack."""
    positions = aa_record.get("indices") or range(aa_record["n"])
    aa = evaluation["per_sample"]["autoattack"]
    others = [v for k, v in evaluation["per_sample"].items() if k != "autoattack"]
    held = [aa[j] == "1" and all(o[i] == "1" for o in others) for j, i in enumerate(positions)]
    return sum(held) / len(held)


def eval_subset(test: ImageSet, n: int | None, seed: int) -> tuple[ImageSet, dict[str, Any]]:
    """A seeded, class-stratified subset of `n` test images (all of them for None) and the record
    of which, for the unit's evaluation.json."""
    return stratified_subset(test, n, seed)


def evaluate_unit(exp: Experiment, train_dir: Path, out: Path, data_root: str | None,
                  log: Log) -> dict[str, Any]:
    """Attack best.pt on the experiment's test subset; AutoAttack on its fixed smaller subset."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    from ..arch.profile import count_parameters
    from ..data.datasets import SyntheticConfig, load_dataset
    from ..evaluate.run import evaluate
    from ..train.checkpoint import load_trained

    ev = exp.evaluation
    model, ckpt, _ = load_trained(train_dir)
    cfg = ckpt["config"]
    synthetic = SyntheticConfig(**cfg["synthetic"]) if cfg.get("synthetic") else None
    _, test, _ = load_dataset(cfg["dataset"], data_root or cfg.get("data_root"),
                              synthetic=synthetic)
    subset, record = eval_subset(test, ev.n_test, ev.seed)
    eps, device = parse_eps(ev.eps), cfg["device"]
    layout = {"channels_last": cfg.get("channels_last") == "on"}  # as it was trained
    t0 = time.perf_counter()
    report = evaluate(model, subset, ev.attacks, eps, batch_size=ev.batch_size, device=device,
                      seed=ev.seed, **layout)
    log(f"  evaluated {train_dir.parent.relative_to(train_dir.parents[2])}: " + ", ".join(
        f"{k} {100 * v:.1f}%" for k, v in report.accuracy.items()))
    out_d = {**report.to_dict(), "params": count_parameters(model), "epoch": ckpt.get("epoch"),
             "device": str(device), "subset": record}
    if ev.autoattack_n:
        aa_set, aa_record = eval_subset(subset, ev.autoattack_n, ev.seed + 1)
        out_d["autoattack_subset"] = aa_record  # positions within the subset above
        aa = evaluate(model, aa_set, ["clean", "autoattack"], eps, batch_size=ev.batch_size,
                      device=device, seed=ev.seed, **layout)
        out_d["accuracy"]["autoattack"] = aa.accuracy["autoattack"]
        out_d["seconds"]["autoattack"] = aa.seconds["autoattack"]
        out_d["autoattack_n"] = aa.n
        out_d["autoattack_subset_clean"] = aa.accuracy["clean"]  # AutoAttack's own baseline
        out_d["per_sample"]["autoattack"] = aa.per_sample["autoattack"]
        out_d["worst_case_autoattack"] = worst_with_autoattack(out_d, aa_record)
        log(f"  AutoAttack on {aa.n} images: {100 * aa.accuracy['autoattack']:.1f}% (clean on "
            f"them {100 * aa.accuracy['clean']:.1f}%)")
    out_d["wall_s"] = time.perf_counter() - t0
    if not all(math.isfinite(v) for v in out_d["accuracy"].values()):
        raise RuntimeError(f"non-finite accuracy in {out_d['accuracy']}")
    write_json_atomic(out, out_d)
    return out_d
