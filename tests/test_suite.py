"""The seed papers' attacks through `dsara evaluate`: every attack stays in the eps-ball, the CLI
reports surrogates, AI-GAN and the squeeze detector, and `--attack-set` is typed."""

import json

import pytest
import torch
from torch import nn

from dsara.attacks.base import check_adversarial
from dsara.attacks.registry import ATTACKS
from dsara.cli import main
from dsara.data.datasets import ImageSet, SyntheticConfig, load_dataset
from dsara.errors import DsaraError
from dsara.evaluate.run import evaluate
from dsara.evaluate.suite import Suite, SuiteOptions, parse_attack_sets
from dsara.train import TrainConfig, run

SYNTH = {"n_train": 320, "n_test": 64, "image_size": 8, "num_classes": 4}
FAST = ["so-krylov.steps=2", "so-krylov.iters=2", "ai-gan.stage1_epochs=1",
        "ai-gan.stage2_epochs=1", "ai-gan.width=4", "ai-gan.pgd_steps=1",
        "squeeze.adaptive_steps=2", "squeeze.nlmeans=off"]


def _train(out, seed):
    run(TrainConfig(arch="resnet_tiny", out=str(out), dataset="synthetic", synthetic=SYNTH,
                    epochs=2, batch_size=32, val_size=40, steps=2, val_steps=2, seed=seed),
        log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    return _train(root / "a", 0), _train(root / "b", 1)


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4)).eval()


def test_every_attack_stays_in_the_eps_ball(runs):
    """The contract every registry entry meets, the suite-built ones included."""
    _, test, _ = load_dataset("synthetic", synthetic=SyntheticConfig(**SYNTH))
    test = test.subset(torch.arange(8))
    model = tiny_net()
    fit = load_dataset("synthetic", synthetic=SyntheticConfig(**SYNTH))[0]
    names = [n for n in ATTACKS if n != "autoattack"]
    options = SuiteOptions(surrogates=[str(runs[1])], detect="squeeze",
                           configs=parse_attack_sets(FAST))
    suite = Suite(model, names, 8 / 255, test, options,
                  lambda: (fit.subset(torch.arange(32)), fit.subset(torch.arange(32, 64))))
    fns = suite.attack_fns()
    assert set(fns) == set(names)
    x, y = test.images.float() / 255, test.labels
    for name, fn in fns.items():
        x_adv = fn(model, x, y, 8 / 255, torch.Generator().manual_seed(0))
        check_adversarial(x, x_adv, 8 / 255, name)  # what evaluate asserts on every batch
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6, name


def test_each_attack_record_says_what_it_needs_and_whether_it_is_a_reconstruction():
    built = {n for n, a in ATTACKS.items() if a.fn is None}
    assert built == {"transfer-mifgsm", "transfer-pgd", "ai-gan", "squeeze-adaptive"}
    assert all(ATTACKS[n].needs for n in built)
    # the [recon] labels of dsara evaluate's documentation (evaluate/run.py, README)
    assert {n for n, a in ATTACKS.items() if a.recon} == {"so-krylov", "ai-gan", "squeeze-adaptive"}
    assert [n for n, a in ATTACKS.items() if a.nchw_only] == ["autoattack"]


def test_placeholders_say_what_they_need():
    x = torch.rand(2, 3, 8, 8)
    data = ImageSet((x * 255).byte(), torch.tensor([0, 1]))
    with pytest.raises(DsaraError, match="--surrogate"):
        evaluate(tiny_net(), data, ["transfer-mifgsm"], 8 / 255)
    with pytest.raises(DsaraError, match="--detect squeeze"):
        evaluate(tiny_net(), data, ["squeeze-adaptive"], 8 / 255)


def test_evaluate_cli_reports_transfer_ai_gan_and_detection(runs, capsys):
    a, b = runs
    argv = ["evaluate", str(a), "--attacks", "clean,pgd20,so-krylov,transfer-mifgsm,ai-gan",
            "--surrogate", f"{b},{a}", "--detect", "squeeze", "--limit", "24"]
    argv += [f"--attack-set={s}" for s in FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((a / "evaluation.json").read_text())
    d = report["details"]
    assert [s["run"] for s in d["transfer-mifgsm"]["surrogates"]] == [str(b), str(a)]
    assert d["so-krylov"]["config"]["iters"] == 2 and d["so-krylov"]["reconstruction"]
    assert 0 <= d["ai-gan"]["targeted_success"] <= 1 and d["ai-gan"]["pgd20_images_per_s"] > 0
    assert d["ai-gan"]["trained_now"] and (a / "ai_gan.pt").is_file()
    det = d["detection"]
    assert det["n_fit"] > 0 and det["squeezers"] == ["bit_depth_5", "median_2x2"]
    assert set(det["attacks"]) == {"pgd20", "so-krylov", "transfer-mifgsm", "ai-gan",
                                   "squeeze-adaptive"}
    assert 0 <= det["worst_case_with_rejection"] <= det["clean_accuracy_with_rejection"]
    assert "squeeze-adaptive" in report["accuracy"]  # the adaptive attacker is always added
    assert "acc w/ rejection" in out and "targeted success" in out and str(b) in out
    assert main(argv) == 0  # a second run reuses the cached generator
    assert not json.loads((a / "evaluation.json").read_text())["details"]["ai-gan"]["trained_now"]


def test_attack_set_is_typed_and_names_the_known_keys():
    cfg = parse_attack_sets(["so-krylov.iters=3", "so-krylov.solver=gmres", "squeeze.fpr=0.1",
                             "transfer.mu=0"])
    assert cfg["so-krylov"].iters == 3 and cfg["so-krylov"].solver == "gmres"
    assert cfg["squeeze"].fpr == 0.1 and cfg["transfer"].mu == 0.0
    with pytest.raises(DsaraError, match="groups: so-krylov, transfer, ai-gan, squeeze"):
        parse_attack_sets(["pgd.steps=3"])
    with pytest.raises(DsaraError, match="keys: iters"):
        parse_attack_sets(["so-krylov.iter=3"])
    with pytest.raises(DsaraError, match="must be like 5"):
        parse_attack_sets(["so-krylov.iters=many"])
    with pytest.raises(DsaraError, match="solvers: cg, minres, gmres"):
        parse_attack_sets(["so-krylov.solver=bicg"])


@pytest.mark.parametrize("argv, message", [
    (["--attacks", "transfer-pgd"], "--surrogate"),
    (["--attack-set", "nope"], "key.path=value"),
])
def test_cli_bad_input_is_one_line(runs, argv, message, capsys):
    assert main(["evaluate", str(runs[0]), "--limit", "4", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsara: error:") and message in err and len(err.splitlines()) == 1


def test_transfer_matrix_diagonal_is_white_box():
    from dsara.attacks.transfer import mifgsm, transfer_matrix

    a, b = tiny_net(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x, y = torch.rand(10, 3, 8, 8), torch.arange(10) % 4
    result = transfer_matrix({"a": a, "b": b}, x, y, 8 / 255, batch_size=4)
    pred = a(x).argmax(1)
    x_adv = mifgsm(a, x, pred, 8 / 255)
    with torch.no_grad():
        white = (a(x_adv).argmax(1) == y).float().mean().item()
        cross = (b(x_adv).argmax(1) == y).float().mean().item()
    assert result["accuracy"][0] == pytest.approx([white, cross])
    assert result["models"] == ["a", "b"] and set(result["clean"]) == {"a", "b"}


def test_transfer_matrix_command_and_report(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = runs
    out = tmp_path / "tm"
    assert main(["transfer-matrix", str(a), str(b), "--labels", "A,<b>", "--limit", "16",
                 "--out", str(out)]) == 0
    result = json.loads((out / "transfer_matrix.json").read_text())
    assert result["models"] == ["A", "<b>"] and len(result["accuracy"]) == 2
    assert result["n"] == 16 and result["subset"]["selection"] == "class-stratified"
    assert all(0 <= v <= 1 for row in result["accuracy"] for v in row)
    assert (out / "transfer_matrix.png").stat().st_size > 1000
    assert "rows crafted on" in capsys.readouterr().out
    assert main(["evaluate", str(a), "--attacks", "clean,fgsm", "--limit", "8"]) == 0
    page = tmp_path / "r.html"
    assert main(["report", str(a), str(out), "--out", str(page)]) == 0
    text = page.read_text()
    assert "&lt;b&gt;" in text and "<b>" not in text.replace("<b>worst case</b>", "")
    assert "data:image/png;base64," in text and "fgsm" in text
    assert main(["transfer-matrix", str(a), str(b), "--labels", "x"]) == 2
    assert main(["report", str(a), "no-such-study-or-dir"]) == 2
