"""An experiment judges itself: each informativeness criterion is computed and a run built to miss
it is flagged with it; the paired bootstrap interval is right on a hand example; the 16x16 dataset
is written deterministically and never overwritten; P-DARTS' skip cap."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsara.arch.genotype import derive
from dsara.data.datasets import box_downsample, load_dataset, write_downsampled
from dsara.errors import DsaraError
from dsara.experiment.judge import (
    NO_DIFFERENCE,
    Criteria,
    check_runs,
    compare_sources,
    paired_bootstrap,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]


def _row(unit, kind="random", clean=0.5, pgd=0.3, n=2000, aa=500, shift=None, bits=None):
    r = {"unit": unit, "source": unit.split("/")[0], "kind": kind, "n_test": n,
         "autoattack_n": aa, "accuracy": {"clean": clean, "pgd20": pgd}, "search": {}}
    if shift is not None:
        r["search"] = {"alpha_shift": {"accurate": shift, "reduce": shift, "robust": shift}}
    if bits is not None:
        r["per_sample"] = {"clean": bits, "pgd20": bits}
    return r


def _good():
    return [_row("dsara/s0", "dsara", shift=0.2), _row("random/s0/c0"), _row("random/s0/c1")]


def test_a_run_meeting_every_criterion_is_informative():
    checks = check_runs(_good(), Criteria(), 1e-3, planned=3)
    assert all(c.held for c in checks) and verdict(checks).startswith("informative")


@pytest.mark.parametrize("change, criterion", [
    (lambda rows: rows[0]["search"]["alpha_shift"].update(reduce=0.01), "alpha left"),
    (lambda rows: rows[1]["accuracy"].update(clean=0.2), "clean >= 40%"),
    (lambda rows: rows[2]["accuracy"].update(pgd20=0.1), "pgd20 >= 20%"),
    (lambda rows: [r.update(n_test=100) for r in rows], "test subset >= 2000"),
    (lambda rows: rows[1].update(n_test=2500), "the same for every unit"),
    (lambda rows: rows[2].update(autoattack_n=20), "AutoAttack on >= 500"),
    (lambda rows: rows.pop(), "units complete"),
])
def test_a_run_built_to_miss_a_criterion_is_flagged_with_it(change, criterion):
    rows = _good()
    change(rows)
    checks = check_runs(rows, Criteria(), 1e-3, planned=3)
    missed = [c for c in checks if not c.held]
    assert len(missed) == 1 and criterion in missed[0].criterion, missed
    text = verdict(checks)
    assert text.startswith("not informative: missed ") and criterion in text


def test_a_reference_row_far_from_chance_is_named_but_does_not_void_the_comparison():
    rows = _good() + [_row("resnet18/s0", "baseline", clean=0.286, pgd=0.222)]
    checks = check_runs(rows, Criteria(), 1e-3, planned=4)
    ref = [c for c in checks if not c.binding]
    assert [c.held for c in ref] == [False, True] and "resnet18/s0 28.6%" in ref[0].detail
    text = verdict(checks)
    assert text.startswith("informative: every criterion held") and "resnet18/s0 28.6%" in text
    rows[1]["accuracy"]["clean"] = 0.2  # a random cell below the floor voids the comparison
    assert verdict(check_runs(rows, Criteria(), 1e-3, planned=4)).startswith("not informative")


def test_alpha_criterion_scales_with_the_definitions_init_std():
    rows = _good()
    assert all(c.held for c in check_runs(rows, Criteria(), 1e-3, 3))
    assert not all(c.held for c in check_runs(rows, Criteria(), 1e-2, 3))  # needs 0.5 now


def test_paired_bootstrap_on_a_hand_example():
    """One searched run, one random cell, 4 images; they differ on one image only. Every resample
    draws the 4 images with replacement: the difference is K/4 with K ~ Binomial(4, 1/4), so
    P(0) = 0.316, P(<= 2) = 0.949, P(<= 3) = 0.996: the 95% interval is [0, 0.75]."""
    s = np.array([[1, 1, 0, 0]], dtype=float)
    r = np.array([[0, 1, 0, 0]], dtype=float)
    out = paired_bootstrap(s, r, n_boot=20000, seed=0)
    for key in ("vs_mean", "vs_best"):  # with one random cell, best = mean
        assert out[key]["estimate"] == pytest.approx(0.25)
        assert (out[key]["low"], out[key]["high"]) == (0.0, 0.75)
        assert out[key]["reading"] == NO_DIFFERENCE


def test_paired_bootstrap_separates_a_clear_difference_and_pairs_the_images():
    rng = np.random.default_rng(1)
    hard = rng.random(500) < 0.5  # images every model gets wrong: paired, they cancel
    s = np.stack([~hard & (rng.random(500) < 0.9) for _ in range(3)]).astype(float)
    r = np.stack([~hard & (rng.random(500) < 0.6) for _ in range(6)]).astype(float)
    out = paired_bootstrap(s, r, n_boot=500, seed=0)
    assert out["vs_mean"]["low"] > 0.1 and out["vs_mean"]["reading"] == "searched better"
    assert out["vs_best"]["estimate"] < out["vs_mean"]["estimate"]
    flipped = paired_bootstrap(r, s, n_boot=500, seed=0)
    assert flipped["vs_mean"]["reading"] == "searched worse"


def test_compare_sources_reads_per_image_results_of_units():
    rows = [_row("dsara/s0", "dsara", bits="1100"), _row("random/s0/c0", bits="0100")]
    out = compare_sources(rows, ["dsara"], ["clean", "worst"], Criteria(bootstrap=1000))
    assert [c["metric"] for c in out] == ["clean", "worst"]
    assert out[0]["vs_mean"]["estimate"] == pytest.approx(0.25) and out[0]["images"] == 4


def test_box_downsample_is_the_block_mean():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    y = box_downsample(x, 2)
    assert y.shape == (2, 2, 2, 3)
    assert y[1, 0, 1, 2] == np.rint(x[1, 0:2, 2:4, 2].astype(float).mean())
    with pytest.raises(DsaraError, match="do not divide"):
        box_downsample(x[:, :3], 2)


def test_downsampled_dataset_is_deterministic_loads_by_name_and_is_never_overwritten(tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
              for s, n in (("train", 20), ("test", 10))}
    a = write_downsampled(tmp_path / "a" / "cifar10-16.npz", splits, 2, "test")
    b = write_downsampled(tmp_path / "b" / "cifar10-16.npz", splits, 2, "test")
    assert a.read_bytes() == b.read_bytes()
    before = a.read_bytes()
    with pytest.raises(DsaraError, match="written once"):
        write_downsampled(a, splits, 2, "test")
    assert a.read_bytes() == before
    train, test, info = load_dataset("cifar10-16", tmp_path / "a")
    assert tuple(train.images.shape) == (20, 3, 16, 16) and len(test) == 10
    assert info.name == "cifar10-16" and info.num_classes == 10 and info.image_size == 16


def test_downsample_script_refuses_to_overwrite_in_one_line(tmp_path):
    (tmp_path / "cifar10-16.npz").write_bytes(b"keep")
    proc = subprocess.run([sys.executable, "scripts/downsample_cifar10.py", str(tmp_path),
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "written once" in proc.stderr
    assert (tmp_path / "cifar10-16.npz").read_bytes() == b"keep"


def test_skip_cap_keeps_at_most_m_skips_in_the_capped_cells_only():
    ops = ["skip_connect", "max_pool_3x3", "sep_conv_3x3"]
    alpha = torch.tensor([[3.0, 0.0, 1.0]] * 5)  # skip strongest everywhere (2 nodes: 5 edges)
    alpha[0, 0] = 2.0  # the weakest skip: the first to go
    alphas = {"accurate": alpha, "reduce": alpha.clone()}
    plain = derive(alphas, ops, 2)
    assert plain.cells["accurate"].parameter_free() == 4
    capped = derive(alphas, ops, 2, skip_cap=1, capped=("accurate",))
    skips = [op for op, _ in capped.cells["accurate"].edges if op == "skip_connect"]
    assert len(skips) == 1 and capped.cells["reduce"] == plain.cells["reduce"]
    assert derive(alphas, ops, 2, skip_cap=4, capped=("accurate",)) == plain


def test_the_verdict_table_keeps_three_columns():
    import re

    from dsara.experiment.judge import Check
    from dsara.experiment.report import judgement_markdown

    checks = [Check("a | b", True, "x|y"), Check("max abs Δα >= 0.05", False, "below: u 0.01")]
    lines = judgement_markdown({"checks": checks, "verdict": verdict(checks), "comparisons": []})
    rows = [line for line in lines if line.startswith("| ")]
    assert rows and all(len(re.findall(r"(?<!\\)\|", row)) == 4 for row in rows)
