"""Baselines: published parameter counts, the uniform model interface, names and bad input."""

import pytest
import torch

import dsara
from dsara.arch.baselines import BASELINES, baseline_name, build_baseline
from dsara.arch.network import Normalize
from dsara.errors import DsaraError

TINY = [name for name in BASELINES if name.endswith("_tiny")]


def n_params(name: str, **kw) -> int:
    with torch.device("meta"):  # full-size nets: count without allocating or initializing
        model = build_baseline(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, millions", [
    ("resnet18", 11.17),  # CIFAR ResNet-18, 10 classes (Madry/Rice et al. model)
    ("preact_resnet18", 11.17),
    ("wrn34_10", 46.16),  # TRADES / MART WRN-34-10
    ("wrn28_10", 36.48),
    ("wrn34_r", 68.12),  # RobustWRN's WRN-34-R (Huang et al., 2021)
])
def test_parameter_counts_match_the_papers(name, millions):
    assert n_params(name) / 1e6 == pytest.approx(millions, rel=0.01)


def test_wrn34_r_is_the_robustwrn_layout():
    with torch.device("meta"):
        model = build_baseline("WRN-34-R")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31  # WRN-34: 6n + 4 with n = 5 blocks per stage; 30 block convs + stem
    assert model.classifier.in_features == 512  # narrower last stage than WRN-34-20's 1280


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_follow_the_model_interface(name):
    model = build_baseline(name, num_classes=5)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (4, 5) and aux is None and torch.isfinite(logits).all()
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing and x.grad is not None
    assert any(isinstance(m, Normalize) for m in model.modules())  # inputs stay in [0, 1]
    assert model.has_auxiliary is False and model.drop_path_prob == 0.0


def test_normalization_is_inside_the_model():
    model = build_baseline("resnet_tiny", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 8, 8)
    inner = model.normalize(x)
    assert torch.allclose(inner, (x - 0.5) / 0.25)


@pytest.mark.parametrize("alias, name", [("ResNet-18", "resnet18"), ("PreAct-ResNet-18",
                         "preact_resnet18"), ("WRN-34-10", "wrn34_10"), ("wrn34-r", "wrn34_r")])
def test_names_are_forgiving(alias, name):
    assert baseline_name(alias) == name


def test_build_model_accepts_baselines():
    model = dsara.build_model("resnet_tiny", num_classes=7)
    assert model.classifier.out_features == 7
    with pytest.raises(DsaraError, match="fixed layout"):
        dsara.build_model("resnet18", cells=8)


def test_unknown_baseline_lists_the_known_ones():
    with pytest.raises(DsaraError, match=r"unknown baseline 'resnet19'; baselines: resnet18, "):
        build_baseline("resnet19")
