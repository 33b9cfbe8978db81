"""Activations as a search-space knob: relu, swish, sparta (a labelled reconstruction)."""

import json

import pytest
import torch
import torch.nn.functional as F
from _shared import TINY_GENOTYPE

import dsara
from dsara import DsaraError
from dsara.arch.activations import ACTIVATIONS, MixedActivation, Sparta, make_activation, resolve
from dsara.arch.archfile import from_genotype_text, load_architecture, save_architecture
from dsara.arch.network import Network
from dsara.arch.space import load_space
from dsara.arch.supernet import Supernet
from dsara.search import SearchConfig, run


def test_sparta_with_no_neighbour_weight_is_exactly_swish():
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(Sparta(4, kernel=3, neighbour_init=0.0)(x), F.silu(x))


def test_sparta_at_default_initialisation_is_close_to_swish():
    x = torch.randn(2, 4, 6, 6)
    act = Sparta(4)  # off-centre taps 0.01
    # sigmoid is 1/4-Lipschitz: |y - swish(x)| <= |x| * 1/4 * 8 taps * 0.01 * max|x|
    bound = x.abs() * 0.25 * 8 * 0.01 * x.abs().max()
    dev = (act(x) - F.silu(x)).abs()
    assert (dev <= bound + 1e-6).all()
    assert dev.max() > 0  # but not equal: the neighbours already count
    assert dev.max() < 0.05 * F.silu(x).abs().max()


def test_sparta_gate_is_spatially_input_dependent():
    """Changing one pixel changes the output of its neighbours (their gates), unlike Swish."""
    x = torch.randn(2, 3, 5, 5)
    x2 = x.clone()
    x2[:, :, 2, 2] += 1.0
    for name, moves in (("sparta", True), ("swish", False), ("relu", False)):
        act = make_activation(name, 3)
        diff = (act(x2) - act(x)).abs()
        neighbours = diff[:, :, 1:4, 1:4].clone()
        neighbours[:, :, 1, 1] = 0
        assert (neighbours.amax((-1, -2)) > 0).all() == moves, name
        far = diff[:, :, 0, 4]  # outside the 3x3 window
        assert (far == 0).all(), name


def test_sparta_constants_are_configurable_and_checked():
    assert Sparta(2, kernel=5).gate.weight.shape == (2, 1, 5, 5)
    with pytest.raises(DsaraError, match="odd"):
        Sparta(2, kernel=4)
    space = load_space("tiny", overrides={"activation": "sparta",
                                          "activation_options.sparta.kernel": 5})
    net = Network(from_genotype_text(TINY_GENOTYPE, "tiny").genotype, space.final_macro())
    gates = [m for m in net.modules() if isinstance(m, Sparta)]
    assert gates and all(g.gate.kernel_size == (5, 5) for g in gates)
    with pytest.raises(DsaraError, match="unknown option 'kernal'"):
        load_space("tiny", overrides={"activation_options.sparta.kernal": 5})


@pytest.mark.parametrize("setting,needle", [
    ("gelu", "unknown activation 'gelu'.*known activations: relu, swish, sparta"),
    ({"robustt": "relu"}, "cell type 'robustt'"),
    (["relu", "relu"], "repeat"),
    ([], "must be a name"),
])
def test_bad_activation_settings_give_one_clear_line(setting, needle):
    with pytest.raises(DsaraError, match=needle) as e:
        load_space("tiny", overrides={"activation": setting})
    assert "\n" not in str(e.value)


def test_one_name_applies_to_every_cell_type_and_a_table_to_some():
    types = ["accurate", "reduce", "robust"]
    assert resolve("sparta", types) == {t: ("sparta",) for t in types}
    assert resolve({"robust": "swish"}, types) == {
        "accurate": ("relu",), "reduce": ("relu",), "robust": ("swish",)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_arnas_cell_with_each_activation_builds_trains_and_evaluates(name, tmp_path):
    model = dsara.build_model("ARNAS", cells=5, channels=8, activation=name)
    kinds = {type(m).__name__ for m in model.cells.modules()}
    assert {"relu": "ReLU", "swish": "SiLU", "sparta": "Sparta"}[name] in kinds
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 7])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    logits, aux = model(x, return_aux=True)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    loss.backward()
    opt.step()
    model.eval()
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the architecture file records the activation and rebuilds the same network
    arch = dsara.arch.archfile.builtin_architecture("ARNAS").resized(5, 8)
    arch = dsara.arch.archfile.Architecture(arch.genotype, type(arch.macro)(
        **{**arch.macro.__dict__, "activation": name}), name="ARNAS")
    back = load_architecture(save_architecture(arch, tmp_path / "a.json"))
    assert back.macro.activation == name
    text = json.loads((tmp_path / "a.json").read_text())
    assert ("activation" in text["macro"]) == (name != "relu")  # relu files read as before
    assert sum(p.numel() for p in dsara.build_model(back).parameters()) == \
        sum(p.numel() for p in model.parameters())


def test_a_discrete_network_refuses_activation_candidates():
    arch = from_genotype_text(TINY_GENOTYPE, "tiny")
    with pytest.raises(DsaraError, match="needs one activation per cell type"):
        dsara.build_model(arch, activation=["relu", "sparta"])


SEARCHED = {"activation.accurate": ["relu", "swish", "sparta"]}


def test_searched_activation_has_its_own_alpha_that_gets_a_gradient():
    space = load_space("tiny_sparta", overrides=SEARCHED)
    net = Supernet(space.proxy_macro(), space.ops)
    beta = net.activation_alphas["accurate"]
    assert set(net.activation_alphas) == {"accurate"} and beta.shape == (3,)
    assert any(p is beta for p in net.arch_parameters())
    assert all(p is not beta for p in net.weight_parameters())
    assert "activation_alphas.accurate" in net.state_dict()
    mixed = [m for m in net.modules() if isinstance(m, MixedActivation)]
    assert mixed and all(m._beta[0] is beta for m in mixed)
    # the beta is not duplicated into every op's state dict
    assert sum(k.endswith("_beta") for k in net.state_dict()) == 0
    F.cross_entropy(net(torch.rand(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    assert beta.grad is not None and beta.grad.abs().sum() > 0
    with torch.no_grad():
        beta.copy_(torch.tensor([0.0, 0.0, 5.0]))
    assert net.derived_activation() == {"accurate": "sparta", "reduce": "swish",
                                         "robust": "sparta"}
    with torch.no_grad():
        beta.copy_(torch.tensor([0.0, 5.0, 0.0]))
    assert net.derived_activation()["accurate"] == "swish"


def test_a_search_over_activations_writes_the_derived_one(tmp_path):
    cfg = SearchConfig(space="tiny_sparta", space_overrides=SEARCHED, dataset="synthetic",
                       synthetic={"n_train": 32, "n_test": 16, "image_size": 8, "noise": 0.1},
                       epochs=1, stage1_epochs=1, batch_size=8, pgd_steps=1, step_size=4 / 255,
                       arch_lr=3e-2, max_steps=2, device="cpu", out=str(tmp_path / "s"))
    result = run(cfg, progress=False)
    macro = load_architecture(result.run_dir / "architecture.json").macro
    assert macro.activations()["robust"] == ("sparta",)
    assert macro.activations()["accurate"][0] in ("relu", "swish", "sparta")
    assert result.history[-1]["activation"] == {k: v[0] for k, v in macro.activations().items()}
    dsara.build_model(result.run_dir / "architecture.json")  # buildable: one name per type


def test_the_activation_study_sweeps_the_space_knob():
    from dsara.study.definition import load_definition

    d = load_definition("activation")
    assert d.params["activation"].choices == ("relu", "swish", "sparta")
    for name in ("relu", "swish", "sparta"):
        cfg = d.search_config({"activation": name}, "unused")
        macro = load_space(cfg.space, cfg.space_overrides).final_macro()
        assert set(macro.activations().values()) == {(name,)}


def test_dsara_train_activation_flag_reaches_the_checkpoint_spec():
    from dsara.cli import build_parser
    from dsara.commands.train import build_config
    from dsara.train.checkpoint import build_from_spec, model_spec

    cfg = build_config(build_parser().parse_args(
        ["train", "ARNAS", "--out", "x", "--activation", "sparta", "--channels", "8",
         "--cells", "5"]))
    assert cfg.activation == "sparta"
    spec = model_spec(cfg.arch, 10, [0.5] * 3, [0.5] * 3, cells=5, channels=8,
                      activation=cfg.activation)
    assert spec["architecture"]["macro"]["activation"] == "sparta"
    assert any(isinstance(m, Sparta) for m in build_from_spec(spec).modules())
    with pytest.raises(DsaraError, match="activation apply to cell-based"):
        model_spec("resnet18", 10, [0.5] * 3, [0.5] * 3, activation="sparta")
