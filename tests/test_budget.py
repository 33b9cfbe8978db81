"""Equal-parameter comparisons: --params picks the knob whose count is nearest to the budget."""

import json
import random

import pytest

from dsara.arch.archfile import Architecture, save_architecture
from dsara.arch.baselines import BASELINES, build_baseline
from dsara.arch.budget import counter, fit_budget, parse_params, step_down, step_up
from dsara.arch.profile import count_parameters
from dsara.arch.sample import sample_genotype
from dsara.arch.space import list_spaces, load_space
from dsara.cli import main
from dsara.errors import DsaraError


@pytest.mark.parametrize("text, value", [("1.2M", 1_200_000), ("800k", 800_000),
                                          ("1200000", 1_200_000), ("1.5e6", 1_500_000),
                                          (" 2 m ", 2_000_000), (250_000, 250_000)])
def test_parse_params(text, value):
    assert parse_params(text) == value


@pytest.mark.parametrize("text", ["", "1.2X", "-5", "0", "M", True])
def test_bad_budgets_fail_with_an_example(text):
    with pytest.raises(DsaraError, match="parameter budget"):
        parse_params(text)


def _check_nearest(arch: str, budget: int, cells=None):
    """The fit's count is the nearest to the budget of the knob and its two neighbours, and the
    budget lies between the neighbours' counts (one channel step either way)."""
    count = _buildable(arch, cells)
    fit = fit_budget(arch, budget, cells=cells)
    k = fit.value
    assert fit.params == count(k)
    down, up = step_down(count, k - 1), step_up(count, k + 1)
    below = count(down) if down is not None else 0
    assert below <= budget <= count(up)
    assert abs(count(k) - budget) <= min(abs(below - budget), abs(count(up) - budget))
    return fit


def _buildable(arch, cells=None):
    """knob -> parameter count, None where no network builds at that knob."""
    _, raw = counter(arch, cells=cells)

    def count(k):
        try:
            return raw(k)
        except DsaraError:
            return None
    return count


@pytest.mark.parametrize("space", list_spaces())
def test_every_space_hits_the_budget_within_one_channel_step(space, tmp_path):
    sp = load_space(space)
    arch = Architecture(sample_genotype(sp, random.Random(0)), sp.final_macro())
    path = str(save_architecture(arch, tmp_path / "a.json"))
    count = _buildable(path, cells=8)
    for k in (6, 13):  # a budget between two channel steps, and one a little above a step
        k = step_up(count, k)
        budget = (count(k) + count(step_up(count, k + 1))) // 2 if k < 10 else count(k) + 3
        fit = _check_nearest(path, budget, cells=8)
        assert fit.knob == "channels" and fit.value in (k, step_up(count, k + 1))


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_hits_the_budget_within_one_width_step(name):
    count = _buildable(name)
    budget = (count(10) + 2 * count(11)) // 3  # nearer to width 11
    fit = _check_nearest(name, budget)
    assert fit.knob == "width" and fit.value == 11


def test_a_scaled_baseline_keeps_its_stage_ratios():
    model = build_baseline("resnet18", width=16)
    widths = [m.out_features if hasattr(m, "out_features") else None for m in model.modules()]
    assert model.classifier.in_features == 128 and 10 in widths  # 16/32/64/128, 10 classes
    assert count_parameters(model) < count_parameters(build_baseline("resnet18"))


def test_an_impossible_budget_is_one_line():
    with pytest.raises(DsaraError, match="is the budget a typo"):
        fit_budget("resnet_tiny", 10**13)


def test_arch_info_params_reports_the_count_reached(capsys):
    assert main(["arch", "info", "ARNAS", "--cells", "8", "--params", "300k", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    fit = fit_budget("ARNAS", 300_000, cells=8)
    assert info["C"] == fit.value and info["parameters"] == fit.params
    assert main(["arch", "info", "resnet18", "--params", "1M"]) == 0
    assert "budget        width = " in capsys.readouterr().out


def test_train_params_builds_the_fitted_network(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "96",
                 "--synthetic-test", "16", "--synthetic-size", "8", "--epochs", "1", "--steps",
                 "1", "--batch-size", "32", "--val-size", "16", "--train-size", "40",
                 "--params", "20k", "--device", "cpu", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    fit = fit_budget("resnet_tiny", 20_000)
    assert config["params"] == 20_000 and config["width"] == fit.value
    from dsara.train.checkpoint import load_trained

    model, _, _ = load_trained(out)
    assert count_parameters(model) == fit.params


def test_params_and_channels_together_are_refused(capsys):
    assert main(["train", "ARNAS", "--params", "1M", "--channels", "16", "--dataset",
                 "synthetic", "--out", "unused"]) == 2
    assert "not both" in capsys.readouterr().err
