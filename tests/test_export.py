"""Exports: torch.export, ONNX and the RobustBench model.py reproduce dsara's logits in a Python
process that cannot import dsara; the model card carries evaluation.json's figures; the genotype
text is the authors' form; bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import TINY_GENOTYPE

import dsara
from dsara.arch.archfile import from_genotype_text, save_architecture
from dsara.arch.baselines import BASELINES, build_baseline
from dsara.arch.genotype import get_published, parse_genotype
from dsara.cli import main
from dsara.errors import DsaraError
from dsara.export import ExportOptions, export, standalone
from dsara.export.genotype_text import authors_text
from dsara.export.portable import check_matches
from dsara.export.robustbench import eps_text
from dsara.export.source import Source, load_source
from dsara.train import TrainConfig
from dsara.train import run as train_run
from dsara.train.checkpoint import load_trained

SYNTH = {"n_train": 80, "n_test": 24, "image_size": 8, "num_classes": 4}
ROOT = Path(__file__).resolve().parents[1]

# every DARTS op, a stride-2 skip (factorized reduce) and `none` on reduction edges
ALL_OPS = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_3x3', 0), "
    "('dil_conv_5x5', 2), ('avg_pool_3x3', 1), ('max_pool_3x3', 3), ('skip_connect', 0), "
    "('none', 4)], normal_concat=range(2, 6), reduce=[('skip_connect', 0), ('none', 1), "
    "('max_pool_3x3', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 2), ('dil_conv_3x3', 1), "
    "('skip_connect', 3), ('dil_conv_5x5', 0)], reduce_concat=[2, 4, 5])")


def trained(root: Path, arch: str, name: str) -> Path:
    cfg = TrainConfig(arch=arch, out=str(root / name), dataset="synthetic", synthetic=SYNTH,
                      epochs=1, batch_size=32, val_size=16, steps=1, val_steps=1, device="cpu")
    train_run(cfg, log=lambda line: None)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    arch = save_architecture(from_genotype_text(TINY_GENOTYPE, "tiny"), root / "tiny.json")
    cells, resnet = trained(root, str(arch), "cells"), trained(root, "resnet_tiny", "resnet")
    for run in (cells, resnet):  # a real, small evaluation.json
        assert main(["evaluate", str(run), "--attacks", "clean,pgd20", "--eps", "8/255",
                     "--device", "cpu"]) == 0
    return {"cells": cells, "resnet": resnet}


FRESH_PYTHON = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoDsara(importlib.abc.MetaPathFinder):  # dsara must be neither imported nor importable
        def find_spec(self, name, path=None, target=None):
            if name == "dsara" or name.startswith("dsara."):
                raise ImportError("dsara is blocked in this process")
    sys.meta_path.insert(0, NoDsara())
    # the checkout leaves the path; a virtual environment inside it (CI's .ci-venv) stays
    sys.path = [p for p in sys.path if p and (not p.startswith(ROOT) or p.startswith(sys.prefix))]
    import numpy as np, onnxruntime, torch
    x = {n: torch.load(f"{n}.x.pt", weights_only=True) for n in ("b1", "b5")}
    out = {}
    for n, batch in x.items():
        out[f"pt2_{n}"] = torch.export.load("cells.pt2").module()(batch).detach().numpy().tolist()
        s = onnxruntime.InferenceSession("cells.onnx", providers=["CPUExecutionProvider"])
        out[f"onnx_{n}"] = s.run(["logits"], {"images": batch.numpy()})[0].tolist()
    for folder in ("rb_cells", "rb_resnet"):
        sys.path.insert(0, folder)
        sys.modules.pop("model", None)
        import model
        with torch.no_grad():
            out[f"{folder}_b5"] = model.load_model()(x["b5"]).numpy().tolist()
        sys.path.pop(0)
    assert not [m for m in sys.modules if m.split(".")[0] == "dsara"]
    print(json.dumps(out))
""")


def test_exports_reproduce_the_logits_without_dsara(runs, tmp_path):
    """One fresh interpreter (dsara blocked from import and from sys.path) runs the .pt2, the ONNX
    file and both RobustBench model.py files at batch sizes 1 and 5 (traced at 2)."""
    import onnx

    for fmt, out in (("torch-export", "cells.pt2"), ("onnx", "cells.onnx"),
                     ("robustbench", "rb_cells")):
        export(runs["cells"], fmt, tmp_path / out)
    export(runs["resnet"], "robustbench", tmp_path / "rb_resnet")
    gen = torch.Generator().manual_seed(5)
    x = {n: torch.rand(b, 3, 8, 8, generator=gen) for n, b in (("b1", 1), ("b5", 5))}
    for n, batch in x.items():
        torch.save(batch, tmp_path / f"{n}.x.pt")
    code = f"ROOT = {str(ROOT)!r}\n" + FRESH_PYTHON
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    cells, _, _ = load_trained(runs["cells"])
    resnet, _, _ = load_trained(runs["resnet"])
    with torch.no_grad():
        want = {n: cells(b).numpy() for n, b in x.items()}
        want_resnet = resnet(x["b5"]).numpy()
    for n in x:
        assert want[n].shape == (len(x[n]), 4)
        assert np.abs(np.array(got[f"pt2_{n}"]) - want[n]).max() < 1e-4
        assert np.abs(np.array(got[f"onnx_{n}"]) - want[n]).max() < 1e-4
    assert np.abs(np.array(got["rb_cells_b5"]) - want["b5"]).max() < 1e-4
    assert np.abs(np.array(got["rb_resnet_b5"]) - want_resnet).max() < 1e-4
    assert np.abs(want["b5"][0] - want["b5"][1]).max() > 1e-3  # distinct rows: a real check

    proto = onnx.load(str(tmp_path / "cells.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: any batch size
    assert {p.key for p in proto.metadata_props} >= {"dsara_version", "input"}


def test_robustbench_card_carries_the_evaluation(runs, tmp_path):
    ev = json.loads((runs["cells"] / "evaluation.json").read_text())
    code = main(["export", str(runs["cells"]), "--format", "robustbench", "--out",
                 str(tmp_path / "rb"), "--name", "Dsara2026Tiny"])
    assert code == 0
    card = json.loads((tmp_path / "rb" / "Dsara2026Tiny.json").read_text())
    assert {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
            "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
            "unreliable", "threat_model"} <= set(card)
    assert card["clean_acc"] == f"{100 * ev['accuracy']['clean']:.2f}"
    assert card["eps"] == "8/255" and card["threat_model"] == "Linf"
    assert card["additional_data"] is False and card["number_forward_passes"] == 1
    assert card["dataset"] == "synthetic" and card["authors"] == "" and card["name"] == ""
    assert card["autoattack_acc"] == "" and "AutoAttack was not run" in card["footnote"]
    assert "tiny" in card["architecture"] and "5 cells" in card["architecture"]
    weights = torch.load(tmp_path / "rb" / "Dsara2026Tiny.pt", weights_only=True)
    assert weights and not any(k.startswith("auxiliary_head.") for k in weights)
    prov = json.loads((tmp_path / "rb" / "provenance.json").read_text())
    assert prov["evaluation"]["accuracy"] == ev["accuracy"]

    # AutoAttack figures, when the evaluation has them, go to autoattack_acc
    aa = {**ev, "accuracy": {"clean": 0.8125, "autoattack": 0.4375}, "eps": 0.031}
    source = load_source(runs["cells"])
    source.evaluation = aa
    export_rb = dsara.export.EXPORTERS["robustbench"]
    export_rb(source, tmp_path / "rb2", ExportOptions(name="m"))
    card = json.loads((tmp_path / "rb2" / "m.json").read_text())
    assert (card["clean_acc"], card["autoattack_acc"], card["eps"]) == ("81.25", "43.75", "0.031")
    assert "AutoAttack" not in card["footnote"]


# every activation (sparta with a non-default kernel), input normalization off
OTHER_MACRO = {"activation": {"normal": "swish", "reduce": "sparta"},
               "activation_options": {"sparta": {"kernel": 5}}, "normalize": False}


@pytest.mark.parametrize("name", [n for n in BASELINES if n.endswith("_tiny")]
                         + ["cells", "cells-raw", "cells-acts"])
def test_standalone_network_matches_dsara(name):
    """The torch-only rebuild has dsara's exact state-dict keys and logits (random weights, BN
    statistics moved off their defaults so that a wrong buffer would show)."""
    if name == "cells-acts":
        arch = from_genotype_text(ALL_OPS, "darts").resized(5, 4)
        arch = dsara.Architecture(arch.genotype, dataclasses.replace(arch.macro, **OTHER_MACRO))
        model = dsara.build_model(arch)
        source = Source(Path("x"), {"kind": "architecture", "name": name,
                                    "architecture": arch.to_dict()}, model)
    elif name.startswith("cells"):  # cells-raw: no input normalization, as the DSARA space
        model = dsara.build_model(from_genotype_text(ALL_OPS, "darts"), cells=5, channels=4,
                                  normalize=name == "cells")
        source = Source(Path("x"), {"kind": "architecture", "name": "all-ops",
                                    "architecture": _arch_dict(model)}, model)
    else:
        model = build_baseline(name, 7)
        source = Source(Path("x"), {"kind": "baseline", "name": name, "num_classes": 7,
                                    "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}, model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    from dsara.export.robustbench import AUX, layout

    net = standalone.build(json.loads(json.dumps(layout(source, "w.pt"))))  # as model.py reads it
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(AUX)}
    net.load_state_dict(state)  # strict: same keys and shapes
    x = torch.rand(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    if name == "cells-acts":  # the options reached the rebuild: sparta gates are 5x5
        assert {m.gate.kernel_size for m in net.modules()
                if isinstance(m, standalone.Sparta)} == {(5, 5)}
        assert not isinstance(net.normalize, standalone.Normalize)


def _arch_dict(model):
    arch = from_genotype_text(ALL_OPS, "darts").resized(5, 4)
    return dsara.Architecture(arch.genotype, model.macro).to_dict()


def test_robustbench_refuses_what_model_py_cannot_rebuild():
    from dsara.export.robustbench import layout

    source = Source(Path("run"), {"kind": "compressed", "name": "c"}, build_baseline("resnet_tiny"))
    with pytest.raises(DsaraError, match="holds a compressed network.*torch-export or onnx"):
        layout(source, "w.pt")


def test_check_matches_refuses_an_unfaithful_export(runs):
    source = load_source(runs["cells"])
    options = ExportOptions()
    exact = check_matches(source, options, lambda x: source.model(x).numpy(), Path("f"))
    assert exact == 0.0
    with pytest.raises(DsaraError, match="differs from the dsara model"):
        check_matches(source, options, lambda x: source.model(x).numpy() + 1e-3, Path("f"))


def test_genotype_is_the_authors_text(runs, tmp_path):
    arnas = get_published("ARNAS")
    published = next(line.split(" = ", 1)[1] for line in
                      (ROOT / "dsara" / "arch" / "published_cells.txt").read_text().splitlines()
                      if line.startswith("ARNAS = "))
    assert authors_text(arnas) == published  # character for character
    assert main(["export", "ARNAS", "--format", "genotype", "--out", str(tmp_path / "g.txt")]) == 0
    assert parse_genotype((tmp_path / "g.txt").read_text()) == arnas
    out = tmp_path / "cells.txt"
    assert main(["export", str(runs["cells"]), "--format", "genotype", "--out", str(out)]) == 0
    assert parse_genotype(out.read_text()) == parse_genotype(TINY_GENOTYPE)
    odd = parse_genotype(ALL_OPS)
    assert "reduce_concat=[2, 4, 5]" in authors_text(odd) and parse_genotype(
        authors_text(odd)) == odd
    assert eps_text(8 / 255) == "8/255" and eps_text(0.031) == "0.031"


def test_bad_input_is_one_clear_line(runs, tmp_path, capsys):
    cases = [
        (["export", str(runs["cells"]), "--format", "tflite", "--out", "x"],
         "unknown export format 'tflite'; formats: torch-export, onnx, robustbench, genotype"),
        (["export", str(tmp_path), "--format", "onnx", "--out", "x"], "not a `dsara train` run"),
        (["export", str(runs["resnet"]), "--format", "genotype", "--out", str(tmp_path / "g")],
         "baseline"),
    ]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "best.pt").write_bytes((runs["cells"] / "best.pt").read_bytes())
    cases.append((["export", str(bare), "--format", "robustbench", "--out", str(tmp_path / "r")],
                  "has no evaluation.json; run dsara evaluate"))
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("dsara: error: ") and needle in err and err.count("\n") == 1


def test_torch_export_leaves_the_auxiliary_head_out(runs, tmp_path):
    model, _, _ = load_trained(runs["cells"])
    head = {k for k in model.state_dict() if k.startswith("auxiliary_head.")}
    assert head  # the network trained with one, so the test can fail
    export(runs["cells"], "torch-export", tmp_path / "cells.pt2")
    program = torch.export.load(str(tmp_path / "cells.pt2"))
    kept = set(program.state_dict)
    assert kept and not [k for k in kept if "auxiliary_head" in k], sorted(kept)
    head_bytes = sum(model.state_dict()[k].numel() * 4 for k in head)
    whole = sum(v.numel() * 4 for v in model.state_dict().values())
    assert (tmp_path / "cells.pt2").stat().st_size < whole - head_bytes / 2 + 200_000
    assert model.auxiliary_head is not None  # the exported copy, not the model, lost it
