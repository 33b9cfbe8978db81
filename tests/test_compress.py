"""Compression after training: GDWS (LEGO / MEGO), Tucker-2 low rank, the compressed checkpoint,
`dsara compress`, and the inference benchmark."""

import copy
import json

import pytest
import torch
from torch import nn

from dsara import DsaraError
from dsara.arch.baselines import build_baseline
from dsara.arch.compressed import GDWSConv, Tucker2Conv, apply_structure, eligible_convs
from dsara.arch.profile import count_macs, count_parameters
from dsara.cli import main
from dsara.compress.gdws import (
    ChannelSVD,
    GDWSConfig,
    compress_gdws,
    error_weights,
    gdws_layer,
    lego,
    mego,
    mego_kernels,
    plan_layer,
)
from dsara.compress.lowrank import (
    ConvFactors,
    LowRankConfig,
    compress_lowrank,
    factorise,
    tucker2_macs,
    tucker2_params,
)
from dsara.compress.throughput import BenchConfig, bench, table
from dsara.train.checkpoint import build_from_spec, load_checkpoint, load_model, save_checkpoint

CONVS = [  # (C, M, K, stride, padding, dilation, bias)
    (4, 6, 3, 1, 1, 1, False), (5, 3, 3, 2, 1, 1, True), (3, 7, 5, 1, 4, 2, False),
    (6, 6, (3, 1), 1, (1, 0), 1, True)]


def conv(C, M, K, stride, padding, dilation, bias):
    return nn.Conv2d(C, M, K, stride, padding, dilation, bias=bias)


def full_keep(c: nn.Conv2d) -> torch.Tensor:
    return torch.ones(c.in_channels, min(c.out_channels, c.weight[0, 0].numel()), dtype=torch.bool)


@pytest.mark.parametrize("args", CONVS)
def test_gdws_with_beta_zero_reproduces_the_conv(args):
    c = conv(*args)
    svd = ChannelSVD.of(c.weight)
    scores = torch.rand(svd.S.shape, dtype=torch.float64) * svd.S ** 2
    keep = lego(scores, 0.0)
    assert keep.all()  # every term has positive error: nothing fits in beta = 0
    layer = gdws_layer(c, svd, keep)
    x = torch.randn(2, args[0], 9, 9)
    torch.testing.assert_close(layer(x), c(x), atol=1e-5, rtol=0)


def test_gdws_with_beta_zero_reproduces_every_conv_of_a_network():
    model = build_baseline("resnet_tiny").eval()
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([1, 4, 7])
    ref = model(x)
    convs = dict(eligible_convs(model))
    structure, report = compress_gdws(
        model, x[:2], y[:2], GDWSConfig(budget=0.0, n_images=2, steps=1, keep_larger=True))
    assert set(structure) == set(convs) and all(r["dropped_error"] == 0 for r in report.values())
    assert all(isinstance(model.get_submodule(n), GDWSConv) for n in convs)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=0)


def test_an_already_depthwise_separable_conv_is_recovered_exactly_with_G_equal_C():
    C, M, K = 5, 7, 3
    depthwise, pointwise = torch.randn(C, K, K), torch.randn(M, C)
    c = nn.Conv2d(C, M, K, padding=1, bias=False)
    with torch.no_grad():
        c.weight.copy_(pointwise[:, :, None, None] * depthwise[None])  # W[m, c] = P[m, c] D[c]
    _, keep, rep = plan_layer(c, torch.ones(C), GDWSConfig(budget=1e-9).resolved())
    assert rep["G"] == C and keep.sum(1).tolist() == [1] * C
    layer = gdws_layer(c, ChannelSVD.of(c.weight), keep)
    assert layer.uniform  # one kernel per channel: a plain depthwise conv, no gather
    x = torch.randn(2, C, 8, 8)
    torch.testing.assert_close(layer(x), c(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("beta", [0.0, 0.05, 0.3, 1.0, 100.0])
def test_lego_drops_at_most_beta_and_no_more_terms_fit(beta):
    scores = torch.rand(6, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    keep = lego(scores, beta)
    dropped = scores[~keep]
    assert dropped.sum() <= beta and keep.sum() >= 1
    kept = scores[keep].sort().values
    if len(kept) > 1:  # the next-smallest kept term would break the budget
        assert dropped.sum() + kept[0] > beta
    if len(dropped):  # only the smallest terms are dropped
        assert dropped.max() <= kept.min()


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.7, 1.0])
def test_mego_meets_its_kernel_budget_and_keeps_the_largest_terms(fraction):
    c = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    G_max = mego_kernels(c, fraction)
    assert G_max * (9 + 10) <= fraction * 10 * 6 * 9 or G_max == 1
    svd, keep, rep = plan_layer(c, torch.rand(6), GDWSConfig("mego", fraction).resolved())
    assert rep["G"] == min(G_max, keep.numel()) and rep["macs_fraction"] <= max(fraction,
                                                                                 19 / 540)
    scores = torch.rand(6, 9, dtype=torch.float64)
    k = mego(scores, 7)
    assert k.sum() == 7 and scores[k].min() >= scores[~k].max()


def test_error_weights_follow_the_authors_formula_on_a_tiny_network():
    """alpha_c = sum_{j != t} ||d(z_t - z_j)/dW_c||^2 / (2 (z_t - z_j)^2 M K^2), over images; eps
    = 0 makes the PGD examples the images themselves, so a direct computation must agree."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    x, y = torch.rand(2, 3, 6, 6), torch.tensor([0, 2])
    got = error_weights(net, x, y, GDWSConfig(eps=0.0, steps=1), ["2"])["2"]
    W = net[2].weight
    want = torch.zeros(4, dtype=torch.float64)
    for i in range(2):
        z = net(x[i: i + 1])[0]
        t = int(z.argmax())
        for j in set(range(3)) - {t}:
            (g,) = torch.autograd.grad(z[t] - z[j], W, retain_graph=True)
            want += (g.double() ** 2).sum((0, 2, 3)) / (2 * float((z[t] - z[j]).detach()) ** 2 * 5 * 9)
    torch.testing.assert_close(got, want / 2)
    moved = error_weights(net, x, y, GDWSConfig(eps=0.3, steps=3, step_size=0.1), ["2"])["2"]
    assert not torch.allclose(moved, got)  # the PGD examples, not the clean images, count


@pytest.mark.parametrize("args", CONVS)
def test_full_rank_tucker2_reproduces_the_conv(args):
    c = conv(*args)
    f = ConvFactors.of(c, 81, 81)
    layer = factorise(c, f, c.in_channels, c.out_channels)
    x = torch.randn(2, args[0], 9, 9)
    torch.testing.assert_close(layer(x), c(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("args", CONVS)
def test_parameter_and_multiply_add_formulas_hold(args):
    c = conv(*args)
    x = torch.randn(1, args[0], 9, 9)
    pix_in, pix_out = 81, c(x).shape[-1] * c(x).shape[-2]
    t = Tucker2Conv(c, [2, 3])
    assert sum(p.numel() for p in t.parameters()) == tucker2_params(c, 2, 3)
    assert count_macs(t, (args[0], 9, 9)) == tucker2_macs(c, 2, 3, pix_in, pix_out)
    counts = [2, 0, 1] + [1] * (args[0] - 3)
    g = GDWSConv(c, counts)
    G, K2, M = sum(counts), c.weight[0, 0].numel(), c.out_channels
    assert sum(p.numel() for p in g.parameters()) == G * K2 + M * G + (M if args[6] else 0)
    assert count_macs(g, (args[0], 9, 9)) == pix_out * G * (K2 + M)
    assert g(x).shape == c(x).shape


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_lowrank_ranks_meet_a_global_budget(kind):
    model = build_baseline("resnet_tiny").eval()
    measure = count_parameters if kind == "params" else lambda m: count_macs(m, (3, 16, 16))
    before = measure(model)
    structure, report = compress_lowrank(model, LowRankConfig(0.6, kind), (3, 16, 16))
    assert structure and measure(model) <= 0.6 * before
    with pytest.raises(DsaraError, match="cannot be met"):
        compress_lowrank(build_baseline("resnet_tiny"), LowRankConfig(0.01, kind), (3, 16, 16))


def test_a_network_without_eligible_convs_is_refused_with_a_reason():
    import dsara

    net = dsara.build_model("ARNAS", cells=5, channels=8)
    assert not list(eligible_convs(net))
    with pytest.raises(DsaraError, match="depthwise-separable already"):
        compress_lowrank(net, LowRankConfig(0.5))


def test_compressed_checkpoint_rebuilds_from_integers_with_weights_only(tmp_path):
    base = build_baseline("resnet_tiny").eval()
    base_spec = {"kind": "baseline", "name": "resnet_tiny", "num_classes": 10,
                 "mean": [0.5] * 3, "std": [0.25] * 3}
    model = build_from_spec(base_spec).eval()
    model.load_state_dict(base.state_dict())
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([3, 5])
    structure, _ = compress_gdws(model, x, y, GDWSConfig(budget=0.01, n_images=2, steps=1,
                                                         keep_larger=True))
    first = next(iter(structure))
    structure_lr, _ = compress_lowrank(model, LowRankConfig(1.0), (3, 16, 16))
    assert not structure_lr  # full budget: nothing needs factorising
    spec = {"kind": "compressed", "method": "gdws", "base": base_spec, "layers": structure}
    save_checkpoint(tmp_path / "c.pt", {"model_spec": spec, "model": model.state_dict()})
    ckpt = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    back = load_model(ckpt, "c.pt").eval()
    assert isinstance(back.get_submodule(first), GDWSConv)
    torch.testing.assert_close(back(x), model(x))
    bad = {**spec, "layers": {"layers.0.nope": {"type": "gdws", "counts": [1]}}}
    with pytest.raises(DsaraError, match="not a compressible conv"):
        build_from_spec(bad)
    with pytest.raises(DsaraError, match="unknown type"):
        apply_structure(build_baseline("resnet_tiny"), {first: {"type": "pruned"}})


def test_bench_times_every_network_and_the_table_has_the_ratio():
    a = build_baseline("resnet_tiny")
    b = copy.deepcopy(a)
    compress_lowrank(b, LowRankConfig(0.5), (3, 8, 8))
    rows = bench({"original": a, "lowrank": b}, "cpu",
                 BenchConfig(batches=(1, 4), repeats=2, warmup=1, min_images=4,
                             input_size=(3, 8, 8)))
    assert [r.name for r in rows] == ["original", "lowrank"]
    assert all(r.images_per_s[k] > 0 for r in rows for k in (1, 4))
    assert rows[1].params < rows[0].params and rows[1].macs < rows[0].macs
    text = table(rows)
    assert "1.00x" in text and "img/s @4" in text


SYNTH = ["--dataset", "synthetic", "--synthetic-train", "96", "--synthetic-test", "32",
         "--synthetic-size", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "base"
    assert main(["train", "resnet_tiny", *SYNTH, "--epochs", "1", "--steps", "1",
                 "--batch-size", "32", "--val-size", "32", "--device", "cpu",
                 "--out", str(out)]) == 0
    return out


def test_dsara_compress_gdws_writes_a_run_that_dsara_evaluate_reads(trained, tmp_path, capsys):
    out = tmp_path / "gdws"
    assert main(["compress", str(trained), "--method", "gdws", "--budget", "0.05", "--images",
                 "4", "--bench-repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "img/s @1" in printed and "img/s @256" in printed and "ratio" in printed
    report = json.loads((out / "compression.json").read_text())
    assert report["method"] == "gdws" and report["figures"]["original"]["params"] > 0
    assert set(report["layers"]) == {n for n, _ in eligible_convs(build_baseline("resnet_tiny"))}
    assert main(["evaluate", str(out), "--attacks", "clean,pgd20", "--device", "cpu"]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["meta"]["model"] == "gdws of resnet_tiny" and ev["n"] == 32
    assert 0 <= ev["accuracy"]["pgd20"] <= ev["accuracy"]["clean"] <= 1
    assert main(["compress", str(trained), "--method", "gdws", "--out", str(out)]) == 2


def test_dsara_compress_lowrank_fine_tunes_with_a_recipe_and_reports_the_recovery(
        trained, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["compress", str(trained), "--method", "lowrank", "--budget", "0.6",
                 "--finetune-epochs", "1", "--set", "steps=1", "--set", "batch_size=32",
                 "--no-bench", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the fine-tune recovered" in printed
    report = json.loads((out / "compression.json").read_text())
    f = report["figures"]
    assert f["compressed"]["params"] <= 0.6 * f["original"]["params"]
    assert f["finetuned"]["params"] == f["compressed"]["params"]
    assert set(f["recovered"]) == {"val_clean", "val_robust"}
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "lowrank-ft" and config["arch"].endswith("compressed.pt")
    assert config["steps"] == 1 and config["eps"] == pytest.approx(8 / 255)
    best, start = load_checkpoint(out / "best.pt"), load_checkpoint(out / "compressed.pt")
    assert best["model_spec"] == start["model_spec"]
    assert any(isinstance(m, Tucker2Conv) for m in load_model(best, "best").modules())
    changed = [k for k in start["model"] if not torch.equal(start["model"][k], best["model"][k])]
    assert changed  # the fine-tune moved the factorised weights it started from
    assert main(["evaluate", str(out), "--attacks", "clean", "--device", "cpu"]) == 0


def test_training_a_checkpoint_starts_from_its_weights(trained, tmp_path):
    from dsara.train.checkpoint import model_spec

    ckpt = trained / "best.pt"
    spec = model_spec(str(ckpt), 10, [0.5] * 3, [0.5] * 3)
    assert spec == load_checkpoint(ckpt)["model_spec"]
    with pytest.raises(DsaraError, match="fine-tuned as it is"):
        model_spec(str(ckpt), 10, [0.5] * 3, [0.5] * 3, channels=8)
    assert main(["train", str(ckpt), *SYNTH, "--epochs", "1", "--steps", "1", "--lr", "1e-12",
                 "--batch-size", "32", "--val-size", "32", "--device", "cpu",
                 "--out", str(tmp_path / "ft")]) == 0
    a, b = load_checkpoint(ckpt)["model"], load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    # a vanishing learning rate: the weights are the checkpoint's, not a fresh initialisation
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a
               if "running" not in k and "num_batches" not in k)
