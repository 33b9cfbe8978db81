"""RobustBench's own loader and `benchmark()` on a `dsara export --format robustbench` folder, by
the README's recipe (Exports). Skipped with the reason when robustbench cannot be imported: it is
not a dsara dependency (robustbench 1.1.1 pins timm 1.0.9 and gdown 5.1.0, imports pkg_resources,
which setuptools >= 81 dropped, and `autoattack`, which PyPI ships as `pyautoattack`)."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from dsara.cli import main

N = 8  # images benchmarked: the loader and the plumbing are under test, not the model
ATTACKED: list[tuple[int, ...]] = []  # the shape of each batch the shim's AutoAttack ran on


def import_robustbench(fast: bool):
    """robustbench with the README's `autoattack` shim over pyautoattack; `fast` cuts AutoAttack
    to 5 APGD-CE steps (standard AutoAttack takes minutes per image on a busy 2-core CPU)."""
    pytest.importorskip("pyautoattack", reason="pip install pyautoattack")
    import pyautoattack
    import pyautoattack.state

    class AutoAttack(pyautoattack.AutoAttack):
        def __init__(self, model, norm="Linf", eps=8 / 255, version="standard", device="cpu",
                     log_path=None, **kw):
            super().__init__(model, norm=norm, eps=eps, version=version, device=device)
            if fast:
                self.attacks_to_run, self.apgd.n_iter = ["apgd-ce"], 5

        def run_standard_evaluation(self, x, y, bs=250, state_path=None, **kw):
            ATTACKED.append(tuple(x.shape))
            return super().run_standard_evaluation(x, y, batch_size=bs, state_path=state_path)[0]

    sys.modules["autoattack"] = types.SimpleNamespace(AutoAttack=AutoAttack,
                                                      state=pyautoattack.state)
    sys.modules["autoattack.state"] = pyautoattack.state
    try:
        import robustbench
        import robustbench.eval
    except ImportError as e:  # not installed, or a defect of its own (the reason says which)
        why = ("robustbench 1.1.1 imports pkg_resources, which setuptools >= 81 dropped: "
               "pip install 'setuptools<81'" if e.name == "pkg_resources" else
               f"robustbench cannot be imported ({e}); see README, Exports")
        pytest.skip(why)
    return robustbench


@pytest.fixture(scope="module")
def rb():
    return import_robustbench(fast=True)


@pytest.fixture(scope="module")
def export_dir(rb, tmp_path_factory):
    """A RobustBench folder of a 1-epoch resnet_tiny run on CIFAR-10-shaped synthetic images."""
    root = tmp_path_factory.mktemp("rb")
    run = root / "run"
    assert main(["train", "resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "64",
                 "--synthetic-test", "16", "--synthetic-size", "32", "--epochs", "1", "--steps",
                 "1", "--batch-size", "32", "--val-size", "10", "--val-steps", "1", "--device",
                 "cpu", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--attacks", "clean", "--device", "cpu"]) == 0
    assert main(["export", str(run), "--format", "robustbench", "--out", str(root / "rb")]) == 0
    return root / "rb"


def test_robustbench_load_model_and_benchmark_run_the_export(rb, export_dir, tmp_path,
                                                            monkeypatch):
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    monkeypatch.syspath_prepend(str(export_dir))
    sys.modules.pop("model", None)
    import model  # the export's model.py

    (weights,) = export_dir.glob("*.pt")  # NAME.pt beside NAME.json
    name = weights.stem
    zoo = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    monkeypatch.setitem(zoo, name, {"model": lambda: model.build(json.loads(model.LAYOUT)),
                                    "gdrive_id": "local"})
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    shutil.copy(export_dir / f"{name}.pt", tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt")
    net = rb.load_model(name, model_dir=str(tmp_path / "models"), dataset="cifar10",
                        threat_model="Linf")

    x = torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.load_model()(x)
        assert torch.allclose(net(x), want, atol=1e-5)  # RobustBench's loader kept every weight
    y = want.argmax(1)  # labels the model gets right: AutoAttack has every image to attack
    monkeypatch.setattr(rb.eval, "load_clean_dataset", lambda dataset, n, data_dir, prepr:
                        (x[:n], y[:n]))
    clean, robust = rb.benchmark(net, n_examples=N, dataset="cifar10", threat_model="Linf",
                                 eps=8 / 255, batch_size=N, data_dir=str(tmp_path / "data"))
    assert ATTACKED == [(N, 3, 32, 32)] and clean == 1.0 and 0.0 <= robust <= clean
