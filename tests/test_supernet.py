"""The property suite, run over every registered search space at its proxy size and a small size."""

import json

import pytest
import torch
import torch.nn.functional as F

import dsara
from dsara.arch.archfile import Architecture, load_architecture, save_architecture
from dsara.arch.space import list_spaces, load_space
from dsara.arch.supernet import Supernet

SIZES = {"proxy": None, "small": (5, 8)}  # (cells, C)
CASES = [(s, z) for s in list_spaces() for z in SIZES]


def supernet(space_name, size):
    space = load_space(space_name)
    macro = space.proxy_macro()
    if SIZES[size]:
        macro = macro.resized(*SIZES[size])
    return space, Supernet(macro, space.ops)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.tensor([1, 3])


@pytest.mark.parametrize("space_name,size", CASES)
def test_supernet_properties(space_name, size, batch, tmp_path):
    space, net = supernet(space_name, size)
    x, y = batch
    logits = net(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()

    # alpha: real parameters in the state dict, apart from the weights, one per cell type
    state = net.state_dict()
    assert {f"alphas.{t}" for t in net.macro.cell_types()} <= set(state)
    arch_ids = {id(p) for p in net.arch_parameters()}
    weight_ids = {id(p) for p in net.weight_parameters()}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in net.parameters()}

    F.cross_entropy(logits, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"

    # genotype -> file -> genotype
    g = net.genotype()
    arch = Architecture(g, net.derived_macro(space.final_macro()))  # a searched activation too
    back = load_architecture(save_architecture(arch, tmp_path / "arch.json"))
    assert back.genotype == g

    # the discrete network at the same small size trains one step
    model = dsara.build_model(back, cells=5, channels=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits, aux = model(x, return_aux=True)
    loss = F.cross_entropy(logits, y) + (F.cross_entropy(aux, y) if aux is not None else 0)
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("space_name", ["tiny", "tiny_darts"])
def test_channels_last_gives_the_same_output(space_name, batch):
    _, net = supernet(space_name, "proxy")
    net.eval()
    x, _ = batch
    ref = net(x)
    out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_partial_channels_run_and_cut_the_op_parameters(batch):
    space = load_space("tiny", overrides={"proxy.C": 8})
    full = Supernet(space.proxy_macro(), space.ops)
    part = Supernet(space.proxy_macro(), space.ops, partial_k=2)
    x, y = batch
    F.cross_entropy(part(x), y).backward()
    assert all(a.grad is not None for a in part.arch_parameters())
    assert sum(p.numel() for p in part.weight_parameters()) < \
        sum(p.numel() for p in full.weight_parameters())


def test_discrete_network_eval_has_no_aux_and_train_has_it(batch):
    model = dsara.build_model("ARNAS", cells=5, channels=8)
    x, _ = batch
    model.eval()
    assert model(x, return_aux=True)[1] is None
    model.train()
    assert model(x, return_aux=True)[1].shape == (2, 10)
    assert model(x).shape == (2, 10)


def test_drop_path_is_active_only_in_training(batch):
    model = dsara.build_model("DARTS_V2", cells=5, channels=8, auxiliary=False)
    model.drop_path_prob = 0.5
    x, _ = batch
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def test_auxiliary_head_uses_the_darts_pool_at_8x8_and_adapts_elsewhere():
    from dsara.arch.network import AuxiliaryHead

    head = AuxiliaryHead(16, 10)
    for side in (8, 4, 16):
        assert head(torch.rand(2, 16, side, side)).shape == (2, 10)
    x = torch.rand(1, 16, 8, 8)
    # DARTS' pool on 8x8: overlapping 5x5 windows at offsets 0 and 3
    torch.testing.assert_close(head.darts_pool(x)[0, :, 0, 0], x[0, :, :5, :5].mean((-1, -2)))
    torch.testing.assert_close(head.darts_pool(x)[0, :, 1, 1], x[0, :, 3:, 3:].mean((-1, -2)))


def _stem_input(model, x):
    """What the stem's convolution sees (the input after the model's own normalization)."""
    seen = []
    hook = model.stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
# the reference codes: DSARA/ARNAS feed raw [0, 1] pixels, DARTS normalizes
NORMALIZED = {"dsara": False, "robustwrn": False, "tiny": False, "tiny_sparta": False,
              "darts": True, "tiny_darts": True}


@pytest.mark.parametrize("space_name", list_spaces())
def test_input_normalization_follows_the_space(space_name, batch):
    x = batch[0]
    standardized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    space = load_space(space_name)
    expected = standardized if NORMALIZED[space_name] else x
    net = Supernet(space.proxy_macro(mean=MEAN, std=STD).resized(5, 4), space.ops)
    torch.testing.assert_close(_stem_input(net, x), expected)
    final = space.final_macro(mean=MEAN, std=STD).resized(5, 4)
    assert final.normalize is NORMALIZED[space_name]
    genotype = dsara.parse_genotype(_tiny_text(space))
    torch.testing.assert_close(_stem_input(dsara.arch.network.Network(genotype, final), x), expected)


def _tiny_text(space) -> str:
    edges = [("skip_connect", 0), ("skip_connect", 1)] * space.nodes
    cells = ", ".join(f"{t}={edges!r}, {t}_concat={list(range(2, space.nodes + 2))!r}"
                      for t in space.cell_types)
    return f"Genotype({cells})"


def test_architecture_files_record_normalization_and_old_files_normalize(tmp_path, batch):
    x = batch[0]
    arnas, darts = dsara.build_model("ARNAS", cells=5, channels=4), \
        dsara.build_model("DARTS_V2", cells=5, channels=4)
    torch.testing.assert_close(_stem_input(arnas, x), x)  # as the ARNAS code: raw pixels
    assert not torch.allclose(_stem_input(darts, x), x)
    path = save_architecture(dsara.arch.archfile.builtin_architecture("ARNAS"), tmp_path / "a.json")
    d = json.loads(path.read_text())
    assert d["macro"]["normalize"] is False
    assert load_architecture(path).macro.normalize is False
    del d["macro"]["normalize"]  # a file written before the option: it was built normalizing
    d["schema_version"] = 1
    path.write_text(json.dumps(d))
    assert load_architecture(path).macro.normalize is True
    old = dsara.build_model(str(path), cells=5, channels=4)
    assert not torch.allclose(_stem_input(old, x), x)
    forced = dsara.build_model("ARNAS", cells=5, channels=4, normalize=True)
    torch.testing.assert_close(_stem_input(forced, x), _stem_input(old, x))


@pytest.mark.parametrize("space_name,overrides,k,stage", [
    ("tiny", {}, 3, 0),                                 # C = 4
    ("robustwrn", {}, 8, 2),                            # 24, 48, 1.5 x 24 = 36
    ("dsara", {"stages.2.width": 1.25}, 4, 2),          # 24, 48, 30
])
def test_partial_k_that_does_not_divide_a_stage_is_one_line(space_name, overrides, k, stage):
    space = load_space(space_name, overrides=overrides)
    with pytest.raises(dsara.DsaraError, match=f"partial_k = {k} .* stage {stage} has") as e:
        Supernet(space.proxy_macro(), space.ops, partial_k=k)
    assert "\n" not in str(e.value)


def test_partial_k_search_refuses_before_loading_data(tmp_path):
    from dsara.search import SearchConfig, run

    cfg = SearchConfig(space="tiny", dataset="cifar10", data_root=str(tmp_path / "none"),
                       partial_k=3, out=str(tmp_path / "run"))
    with pytest.raises(dsara.DsaraError, match="partial_k = 3 needs"):
        run(cfg)


def test_pc_darts_edge_normalization_beta(batch):
    """beta per edge, softmax over each node's incoming edges, scaling the mixed-op outputs."""
    from dsara.arch.supernet import edge_softmax

    space = load_space("tiny", overrides={"proxy.C": 8})
    net = Supernet(space.proxy_macro(), space.ops, partial_k=2)
    assert set(net.edge_betas) == set(net.alphas) and not Supernet(
        space.proxy_macro(), space.ops).edge_betas  # only with partial channels, as PC-DARTS
    arch = {id(p) for p in net.arch_parameters()}
    assert all(id(b) in arch for b in net.edge_betas.values())
    assert all(id(p) not in arch for p in net.weight_parameters())
    assert {f"edge_betas.{t}" for t in net.alphas} <= set(net.state_dict())
    beta = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.1])  # node 0: edges 0-1, node 1: edges 2-4
    torch.testing.assert_close(edge_softmax(beta, 2), torch.cat(
        [torch.softmax(beta[:2], 0), torch.softmax(beta[2:], 0)]))
    # one cell by hand: node = sum_j softmax(beta)_j * mixed_op_j(h_j)
    cell, x = net.cells[0].eval(), batch[0][:, :, :8, :8]
    s0 = s1 = net.stem(x)
    w = torch.softmax(torch.randn(5, len(space.ops)), -1)
    ew = edge_softmax(beta, 2)
    h = [cell.pre0(s0), cell.pre1(s1)]
    h.append(ew[0] * cell.edges[0](h[0], w[0]) + ew[1] * cell.edges[1](h[1], w[1]))
    h.append(sum(ew[2 + j] * cell.edges[2 + j](h[j], w[2 + j]) for j in range(3)))
    torch.testing.assert_close(cell(s0, s1, w, ew), torch.cat(h[2:], 1))
    # beta changes the supernet's output and gets a gradient
    x, y = batch
    net.eval()
    before = net(x)
    with torch.no_grad():
        net.edge_betas["robust"][2:] = torch.tensor([3.0, -3.0, 0.0])
    assert not torch.allclose(before, net(x))
    F.cross_entropy(net(x), y).backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in net.edge_betas.values())


def test_pc_darts_derivation_ranks_edges_by_alpha_times_beta():
    space = load_space("tiny", overrides={"proxy.C": 8})
    net = Supernet(space.proxy_macro(), space.ops, partial_k=2)
    sep = space.ops.index("sep_conv_3x3")
    with torch.no_grad():
        for t in net.alphas:
            net.alphas[t].zero_()
            net.alphas[t][2:, sep] = torch.tensor([2.0, 1.9, 0.0])  # node 1: edges 0, 1 by alpha
            net.edge_betas[t].zero_()
    assert [src for _, src in net.genotype()["robust"].edges[2:]] == [0, 1]
    with torch.no_grad():
        net.edge_betas["robust"][2:] = torch.tensor([-2.0, 0.0, 2.0])  # beta prefers 2, then 1
    assert [src for _, src in net.genotype()["robust"].edges[2:]] == [2, 1]
    assert [src for _, src in net.genotype()["accurate"].edges[2:]] == [0, 1]
